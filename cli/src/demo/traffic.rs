//! Traffic for the demo: a caller sends requests through its own proxy's outbound listener
//! (explicit mode: `Host: api.demo.svc.cluster.local:8080`) at a steady rate, and tallies what
//! came back: which backend version answered, status codes, latency, the identity the server saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

/// What one caller does.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The caller's proxy outbound listener.
    pub proxy: SocketAddr,
    /// Authority of the service called.
    pub authority: String,
    pub method: Method,
    pub path: String,
    /// Requests per second (spread over `concurrency` workers).
    pub rate: u32,
    pub concurrency: u32,
}

/// Tallies since the last `reset`.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub started: Option<Instant>,
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_version: BTreeMap<String, u64>,
    /// Transport errors (connection refused, timeouts).
    pub errors: u64,
    pub latencies_us: Vec<u32>,
    pub last_client_identity: Option<String>,
    pub last_deny_reason: Option<String>,
    pub last_error: Option<String>,
}

impl Tally {
    pub fn success(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
    pub fn share(&self, version: &str) -> f64 {
        let total: u64 = self.by_version.values().sum();
        if total == 0 {
            return 0.0;
        }
        self.by_version.get(version).copied().unwrap_or(0) as f64 / total as f64
    }
    pub fn rps(&self) -> f64 {
        match self.started {
            Some(t) if t.elapsed().as_secs_f64() > 0.05 => {
                self.requests as f64 / t.elapsed().as_secs_f64()
            }
            _ => 0.0,
        }
    }
    /// Latency percentiles in milliseconds (each `q` in 0..=1), from one sorted copy.
    pub fn percentiles_ms<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        if self.latencies_us.is_empty() {
            return [None; N];
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        qs.map(|q| {
            let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
            v.get(idx.min(v.len() - 1)).map(|us| *us as f64 / 1000.0)
        })
    }
}

/// A running caller whose tally can be read and reset.
#[derive(Clone)]
pub struct Load {
    tally: Arc<Mutex<Tally>>,
}

impl Load {
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
    pub fn reset(&self) {
        if let Ok(mut t) = self.tally.lock() {
            *t = Tally {
                started: Some(Instant::now()),
                ..Tally::default()
            };
        }
    }
}

/// Starts `caller`'s workers; they stop when `stop` turns true.
pub fn start(caller: Caller, stop: watch::Receiver<bool>) -> Load {
    let tally = Arc::new(Mutex::new(Tally {
        started: Some(Instant::now()),
        ..Tally::default()
    }));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let workers = caller.concurrency.max(1);
    let per_worker = Duration::from_secs_f64(workers as f64 / caller.rate.max(1) as f64);
    for _ in 0..workers {
        let client = client.clone();
        let caller = caller.clone();
        let tally = tally.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_worker);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
                let outcome = one_request(&client, &caller).await;
                if let Ok(mut t) = tally.lock() {
                    record(&mut t, outcome);
                }
            }
        });
    }
    Load { tally }
}

enum Outcome {
    Response {
        status: u16,
        latency: Duration,
        version: Option<String>,
        client_identity: Option<String>,
        deny_reason: Option<String>,
    },
    Error(String),
}

fn record(t: &mut Tally, outcome: Outcome) {
    t.requests += 1;
    match outcome {
        Outcome::Response {
            status,
            latency,
            version,
            client_identity,
            deny_reason,
        } => {
            *t.by_status.entry(status).or_default() += 1;
            if let Some(v) = version {
                *t.by_version.entry(v).or_default() += 1;
            }
            if client_identity.is_some() {
                t.last_client_identity = client_identity;
            }
            if deny_reason.is_some() {
                t.last_deny_reason = deny_reason;
            }
            if t.latencies_us.len() < 200_000 {
                t.latencies_us
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
            }
        }
        Outcome::Error(e) => {
            t.errors += 1;
            t.last_error = Some(e);
        }
    }
}

async fn one_request(client: &Client<HttpConnector, Empty<Bytes>>, caller: &Caller) -> Outcome {
    let uri = format!("http://{}{}", caller.proxy, caller.path);
    let req = match Request::builder()
        .method(caller.method.clone())
        .uri(uri)
        .header(http::header::HOST, caller.authority.as_str())
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let start = Instant::now();
    let fut = client.request(req);
    let resp = match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::Error(e.to_string()),
        Err(_) => return Outcome::Error("timed out after 5s".into()),
    };
    let status = resp.status().as_u16();
    let deny_reason = resp
        .headers()
        .get("x-weft-deny-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Outcome::Error(e.to_string()),
        Err(_) => return Outcome::Error("body timed out".into()),
    };
    let latency = start.elapsed();
    let (version, client_identity) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => (
            v.get("version").and_then(|x| x.as_str()).map(str::to_owned),
            v.get("clientIdentity")
                .and_then(|x| x.as_str())
                .map(str::to_owned),
        ),
        Err(_) => (None, None),
    };
    Outcome::Response {
        status,
        latency,
        version,
        client_identity,
        deny_reason: deny_reason
            .or_else(|| (status >= 400).then(|| String::from_utf8_lossy(&body).trim().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_percentiles() {
        let mut t = Tally::default();
        for i in 0..100u32 {
            record(
                &mut t,
                Outcome::Response {
                    status: 200,
                    latency: Duration::from_micros(u64::from(i + 1) * 10),
                    version: Some(if i < 90 { "v1" } else { "v2" }.into()),
                    client_identity: None,
                    deny_reason: None,
                },
            );
        }
        record(&mut t, Outcome::Error("refused".into()));
        assert_eq!(t.requests, 101);
        assert_eq!(t.success(), 100);
        assert!((t.share("v2") - 0.10).abs() < 1e-9);
        assert_eq!(t.percentiles_ms([0.0, 1.0]), [Some(0.01), Some(1.0)]);
        assert_eq!(t.errors, 1);
    }
}
