//! Scrapes every meshed pod's proxy admin `/metrics` periodically into the [`History`]:
//! bounded concurrency, a timeout and a body cap per scrape, a cap on the series kept per
//! proxy, and proxies that left the mesh or stopped answering dropped after one window.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::compute::{History, PodRef, Scrape};
use super::promtext::parse;
use crate::shutdown::Shutdown;

/// What the scraper reads from the mesh: meshed pods and TrafficSplits (kept by the reconcile
/// loop, from the same model the compiler reads).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshView {
    /// Meshed pods with an IP.
    pub pods: Vec<(PodRef, IpAddr)>,
    /// TrafficSplits by (namespace, name).
    pub splits: std::collections::BTreeMap<(String, String), SplitView>,
}

/// A TrafficSplit: its apex and weighted backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitView {
    pub apex: String,
    /// (service, weight in thousandths).
    pub backends: Vec<(String, u64)>,
}

impl MeshView {
    /// The view of `model`.
    pub fn of(model: &crate::model::Model) -> MeshView {
        MeshView {
            pods: model
                .pods
                .values()
                .filter(|p| p.meshed)
                .filter_map(|p| {
                    let ip = p.ip?;
                    Some((
                        PodRef {
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                        },
                        ip,
                    ))
                })
                .collect(),
            splits: model
                .splits
                .values()
                .map(|s| {
                    (
                        (s.meta.namespace.clone(), s.meta.name.clone()),
                        SplitView {
                            apex: s.service.clone(),
                            backends: s
                                .backends
                                .iter()
                                .map(|b| (b.service.clone(), b.weight_milli))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }
}

pub type MeshViewRx = watch::Receiver<Arc<MeshView>>;
pub type MeshViewTx = watch::Sender<Arc<MeshView>>;

/// How the scraper runs (defaults in [`ScrapeOptions::default`]).
#[derive(Clone, Debug)]
pub struct ScrapeOptions {
    /// The proxies' admin port (`WEFT_PROXY_ADMIN_ADDR`'s port, 4191 by default).
    pub admin_port: u16,
    /// How often every proxy is scraped.
    pub interval: Duration,
    /// The window TrafficMetrics cover.
    pub window: Duration,
    /// Bound of one scrape (connect, request, body).
    pub timeout: Duration,
    /// Scrapes in flight at once.
    pub concurrency: usize,
    /// Largest `/metrics` body read.
    pub max_body: usize,
    /// Most `response_total`/`response_latency_ms_bucket` series kept per proxy and scrape.
    pub max_series: usize,
}

impl Default for ScrapeOptions {
    fn default() -> Self {
        ScrapeOptions {
            admin_port: 4191,
            interval: Duration::from_secs(10),
            window: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            concurrency: 16,
            max_body: 4 * 1024 * 1024,
            max_series: 5000,
        }
    }
}

/// Scrapes one proxy's `/metrics`.
pub async fn scrape_one(addr: SocketAddr, opts: &ScrapeOptions) -> Result<Scrape, String> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get("/metrics")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), opts.max_body)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        Scrape::from_samples(parse(&text), opts.max_series).map_err(|e| e.to_string())
    };
    tokio::time::timeout(opts.timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Scrapes the mesh until `shutdown`.
pub async fn run(
    history: Arc<Mutex<History>>,
    mut view: MeshViewRx,
    opts: ScrapeOptions,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tick.tick() => {}
        }
        let current = view.borrow_and_update().clone();
        let targets: Vec<(PodRef, SocketAddr)> = current
            .pods
            .iter()
            .map(|(pod, ip)| (pod.clone(), SocketAddr::new(*ip, opts.admin_port)))
            .collect();
        let results: Vec<(PodRef, Result<Scrape, String>)> = futures::stream::iter(targets)
            .map(|(pod, addr)| {
                let opts = &opts;
                async move { (pod, scrape_one(addr, opts).await) }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let now = std::time::Instant::now();
        let Ok(mut h) = history.lock() else { return };
        for (pod, result) in results {
            match result {
                Ok(scrape) => h.record(pod, now, scrape),
                Err(e) => {
                    tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "scrape failed")
                }
            }
        }
        h.prune(now, opts.window, |p| {
            current.pods.iter().any(|(q, _)| q == p)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection-at-a-time server answering every request with `response` (or never,
    /// when `None`).
    async fn server(response: Option<String>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    match response {
                        Some(r) => {
                            let _ = s.write_all(r.as_bytes()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        addr
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn scrapes_keep_only_the_families_used_and_are_bounded() {
        let opts = ScrapeOptions {
            timeout: Duration::from_millis(300),
            max_body: 1024,
            max_series: 2,
            ..ScrapeOptions::default()
        };
        let body = "response_total{direction=\"inbound\",classification=\"success\"} 3\nweft_proxy_x 1\nresponse_latency_ms_bucket{le=\"10\"} 3\n";
        let s = scrape_one(server(Some(ok(body))).await, &opts)
            .await
            .unwrap();
        assert_eq!(s.series.len(), 2, "{s:?}");

        let never = scrape_one(server(None).await, &opts).await;
        assert_eq!(never, Err("timed out".to_string()));

        let big = "response_total{a=\"b\"} 1\n".repeat(100);
        let r = scrape_one(server(Some(ok(&big))).await, &opts).await;
        assert!(r.unwrap_err().starts_with("body"), "over max_body");

        let many = (0..3)
            .map(|i| format!("response_total{{i=\"{i}\"}} 1\n"))
            .collect::<String>();
        let r = scrape_one(server(Some(ok(&many))).await, &opts).await;
        assert!(r.unwrap_err().contains("more than 2 series"));

        let status = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_string();
        let r = scrape_one(server(Some(status)).await, &opts).await;
        assert!(r.unwrap_err().contains("503"));
    }
}
