//! The admin server: `GET /ready`, `GET /live`, `GET /metrics`, `GET /config`, `GET /state`.
//!
//! HTTP/1.1 only (it is scraped by kubelet and Prometheus). What it reports comes from an
//! [`AdminSource`], so the server knows nothing about identity, discovery or the data plane.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Content type of the Prometheus/OpenMetrics text exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server reports. Implemented by the process wiring ([`crate::app`]).
pub trait AdminSource: Send + Sync + 'static {
    /// `Ok(())` when the proxy may receive traffic; otherwise why not (e.g. "no certificate yet").
    fn readiness(&self) -> Result<(), String>;
    /// Appends the metrics in Prometheus text format, without the trailing `# EOF` line.
    fn encode_metrics(&self, out: &mut String);
    /// The config in force, as JSON.
    fn config_json(&self) -> serde_json::Value;
    /// The data plane's live state (retry budgets, per-endpoint load estimates), as JSON: kept
    /// apart from `/config`, because it is not config and survives config pushes.
    fn state_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener: {0}")]
    Accept(#[source] std::io::Error),
}

/// Serves the admin API on `listener` until `shutdown` completes; then stops accepting and
/// returns (admin requests are short; open connections are dropped).
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::debug!(error = %e, "admin accept");
                    continue;
                }
                Err(e) => return Err(AdminError::Accept(e)),
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let source = Arc::clone(&source);
        conns.spawn(serve_conn(stream, peer, source));
    }
    conns.shutdown().await;
    Ok(())
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files; retry later
        || e.raw_os_error() == Some(23) // ENFILE
}

async fn serve_conn(stream: tokio::net::TcpStream, peer: SocketAddr, source: Arc<dyn AdminSource>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { Ok::<_, Infallible>(handle(&req, source.as_ref())) }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "admin connection");
    }
}

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, source: &dyn AdminSource) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match source.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            source.encode_metrics(&mut out);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("# EOF\n");
            with_type(StatusCode::OK, METRICS_CONTENT_TYPE, out)
        }
        "/config" => json(&source.config_json(), "config"),
        "/state" => json(&source.state_json(), "state"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /live, /metrics, /config or /state\n",
        ),
    }
}

fn json(value: &serde_json::Value, what: &str) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render {what}: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Removes a trailing `# EOF` line from an OpenMetrics encoding, so that several registries
/// can be concatenated into one exposition.
pub fn strip_eof(out: &mut String) {
    let trimmed_len = out.trim_end_matches('\n').len();
    if out[..trimmed_len].ends_with("# EOF") {
        out.truncate(trimmed_len - "# EOF".len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        ready: Result<(), String>,
    }

    impl AdminSource for Fixed {
        fn readiness(&self) -> Result<(), String> {
            self.ready.clone()
        }
        fn encode_metrics(&self, out: &mut String) {
            out.push_str("# TYPE x counter\nx_total 1\n");
        }
        fn config_json(&self) -> serde_json::Value {
            serde_json::json!({"version": "v1"})
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap_or_default()
    }

    #[test]
    fn ready_reports_reason_until_ready() {
        let not = Fixed {
            ready: Err("no certificate yet".into()),
        };
        assert_eq!(
            handle(&get("/ready"), &not).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ok = Fixed { ready: Ok(()) };
        assert_eq!(handle(&get("/ready"), &ok).status(), StatusCode::OK);
        assert_eq!(handle(&get("/live"), &not).status(), StatusCode::OK);
        assert_eq!(handle(&get("/nope"), &ok).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn only_get_and_head() {
        let ok = Fixed { ready: Ok(()) };
        let req = Request::post("/ready").body(()).unwrap_or_default();
        let resp = handle(&req, &ok);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            resp.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[test]
    fn state_is_served_as_json_apart_from_config() {
        let ok = Fixed { ready: Ok(()) };
        let resp = handle(&get("/state"), &ok);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }

    #[test]
    fn strip_eof_allows_concatenation() {
        let mut s = String::from("a 1\n# EOF\n");
        strip_eof(&mut s);
        assert_eq!(s, "a 1\n");
        let mut s = String::from("a 1\n");
        strip_eof(&mut s);
        assert_eq!(s, "a 1\n");
    }
}
