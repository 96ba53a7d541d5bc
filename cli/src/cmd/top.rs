//! `weft top`: the most-requested paths, live, from the same stream as `weft tap`
//! (docs/tap.md). Counts, success rate (the proxy's classification, as `response_total`'s) and latency
//! percentiles per (direction, authority, method, path) over what the tap has seen.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::tap::{open, Source, TapRequest};

/// Rows kept (the least requested are dropped beyond) and latencies kept per row.
const MAX_ROWS: usize = 1000;
const MAX_SAMPLES: usize = 1000;
/// Rows printed.
const SHOWN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    direction: String,
    authority: String,
    method: String,
    path: String,
}

#[derive(Default)]
struct Row {
    count: u64,
    success: u64,
    latencies_ms: Vec<f64>,
}

/// The table being built.
#[derive(Default)]
pub struct Top {
    rows: BTreeMap<Key, Row>,
    /// Request heads waiting for their end, by (proxy, id); bounded.
    pending: BTreeMap<(String, u64), Key>,
}

impl Top {
    /// Takes one NDJSON event line.
    pub fn add(&mut self, v: &serde_json::Value) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let id = (
            s("proxy"),
            v.get("id").and_then(|x| x.as_u64()).unwrap_or(0),
        );
        match s("type").as_str() {
            "request" => {
                if self.pending.len() >= MAX_ROWS * 4 {
                    self.pending.pop_first();
                }
                let path = s("path");
                let path = path.split('?').next().unwrap_or("").to_string();
                self.pending.insert(
                    id,
                    Key {
                        direction: s("direction"),
                        authority: s("authority"),
                        method: s("method"),
                        path,
                    },
                );
            }
            "response" => {
                let Some(key) = self.pending.remove(&id) else {
                    return;
                };
                if !self.rows.contains_key(&key) && self.rows.len() >= MAX_ROWS {
                    return;
                }
                let row = self.rows.entry(key).or_default();
                row.count += 1;
                // The proxy classifies (the rule of `response_total`'s `classification`).
                if s("classification") == "success" {
                    row.success += 1;
                }
                if row.latencies_ms.len() < MAX_SAMPLES {
                    row.latencies_ms
                        .push(v.get("latency_ms").and_then(|x| x.as_f64()).unwrap_or(0.0));
                }
            }
            _ => {}
        }
    }

    /// The table, most requested first.
    pub fn render(&self) -> String {
        let mut rows: Vec<(&Key, &Row)> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let mut out = format!(
            "{:<9} {:<40} {:<7} {:<30} {:>7} {:>8} {:>9} {:>9}\n",
            "DIRECTION", "AUTHORITY", "METHOD", "PATH", "COUNT", "SUCCESS", "P50_MS", "P95_MS"
        );
        for (k, r) in rows.into_iter().take(SHOWN) {
            let mut l = r.latencies_ms.clone();
            l.sort_by(|a, b| a.total_cmp(b));
            let q = |p: f64| {
                if l.is_empty() {
                    0.0
                } else {
                    l[((l.len() - 1) as f64 * p).round() as usize]
                }
            };
            out.push_str(&format!(
                "{:<9} {:<40} {:<7} {:<30} {:>7} {:>7.1}% {:>9.3} {:>9.3}\n",
                k.direction,
                k.authority,
                k.method,
                k.path,
                r.count,
                100.0 * r.success as f64 / r.count.max(1) as f64,
                q(0.5),
                q(0.95),
            ));
        }
        out
    }
}

/// Runs `weft top`: redraws every second on a terminal; with `plain` (or not a terminal) prints
/// the table once when `duration` is over (or the stream ends).
pub async fn run(
    source: &Source,
    req: &TapRequest,
    plain: bool,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let mut rx = open(source, req).await?;
    let live = !plain && std::io::stdout().is_terminal();
    let mut top = Top::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v.get("type").and_then(|t| t.as_str()) == Some("error") {
                            eprintln!("top: {}", line);
                        }
                        top.add(&v);
                    }
                }
                None => break,
            },
            _ = tick.tick(), if live => {
                print!("\x1b[2J\x1b[H(weft top: {:.0}s)\n{}", started.elapsed().as_secs_f64(), top.render());
                let _ = std::io::stdout().flush();
            }
            () = until => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    print!("{}", top.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_success_and_latency_by_path() {
        let mut t = Top::default();
        for (id, class) in [(1, "success"), (2, "failure"), (3, "success")] {
            t.add(&serde_json::json!({"type":"request","proxy":"d/p","id":id,"direction":"outbound","authority":"api:80","method":"GET","path":"/items?x=1"}));
            t.add(&serde_json::json!({"type":"response","proxy":"d/p","id":id,"status":200,"classification":class,"latency_ms":2.0}));
        }
        let out = t.render();
        let line = out.lines().nth(1).unwrap();
        assert!(line.contains("/items"), "{out}");
        assert!(line.contains(" 3 "), "{out}");
        assert!(line.contains("66.7%"), "{out}");
    }
}
