//! A small HTTP GET client for the admin endpoints of weft-operator and weft-proxy.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `GET http://{addr}{path}`: the status and body, within `timeout`.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let fut = async {
        let resp = client.get(uri).await.map_err(|e| connect_error(addr, &e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        anyhow!(
            "could not reach {addr} (no answer to GET {path} within {}s)",
            timeout.as_secs_f64()
        )
    })?
}

/// "could not reach ADDR (connection refused)": the root io cause of a failed request, in words.
fn connect_error(addr: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut cur = Some(e);
    let mut cause = None;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            cause = Some(crate::cluster::io_cause(io));
        }
        cur = err.source();
    }
    let cause = cause.unwrap_or_else(|| crate::cluster::causes(e));
    anyhow!("could not reach {addr} ({cause})")
}

/// `GET` and parse JSON, failing on a non-2xx status.
pub async fn get_json(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = get(addr, path, timeout).await?;
    if !(200..300).contains(&status) {
        return Err(anyhow!("{addr}{path} answered {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).with_context(|| format!("{addr}{path} did not return JSON"))
}

/// Polls `GET {path}` until it answers 200 or `deadline` passes.
pub async fn wait_ready(addr: &str, path: &str, deadline: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < deadline {
        match get(addr, path, Duration::from_secs(1)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("{status} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!("{addr}{path} not ready after {deadline:?}: {last}"))
}
