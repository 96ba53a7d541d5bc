//! `weft proxies`: which proxy runs which config version, lagging or NACKing proxies first.

use serde::{Deserialize, Serialize};

use crate::OutputFormat;

/// One entry of the operator's `GET /proxies`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ProxyEntry {
    pub pod: String,
    pub identity: String,
    pub proxy_version: String,
    pub connected_since: String,
    pub last_sent_version: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack_error: Option<String>,
    pub pushes: u64,
    pub acks: u64,
    pub nacks: u64,
}

/// Where a proxy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Sync {
    /// Its last answer was a NACK: it runs an older config than it was sent.
    Nacked,
    /// It has not ACKed the latest config sent yet.
    Lagging,
    Current,
}

impl ProxyEntry {
    pub fn sync(&self) -> Sync {
        if self.last_nack_error.is_some() {
            Sync::Nacked
        } else if self.last_sent_version.is_some()
            && self.last_sent_version == self.last_acked_version
        {
            Sync::Current
        } else {
            Sync::Lagging
        }
    }
}

/// Parses `/proxies` and orders it: NACKing first, then lagging, then in sync; by pod within.
pub fn parse(json: &serde_json::Value) -> anyhow::Result<Vec<ProxyEntry>> {
    let mut entries: Vec<ProxyEntry> = serde_json::from_value(json.clone())?;
    entries.sort_by(|a, b| (a.sync(), &a.pod).cmp(&(b.sync(), &b.pod)));
    Ok(entries)
}

pub fn print(entries: &[ProxyEntry], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(entries)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(entries)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let w = entries
                .iter()
                .map(|e| e.pod.len())
                .max()
                .unwrap_or(3)
                .max(3);
            print!(
                "{:<w$} {:<8} {:<16} {:<16}",
                "POD", "STATUS", "SENT", "ACKED"
            );
            if wide {
                print!(" {:<8} {:<25} IDENTITY", "PROXY", "CONNECTED");
            }
            println!(" LAST NACK");
            for e in entries {
                let status = match e.sync() {
                    Sync::Nacked => "NACK",
                    Sync::Lagging => "lagging",
                    Sync::Current => "in-sync",
                };
                print!(
                    "{:<w$} {:<8} {:<16} {:<16}",
                    e.pod,
                    status,
                    e.last_sent_version.as_deref().unwrap_or("-"),
                    e.last_acked_version.as_deref().unwrap_or("-")
                );
                if wide {
                    print!(
                        " {:<8} {:<25} {}",
                        e.proxy_version, e.connected_since, e.identity
                    );
                }
                println!(" {}", e.last_nack_error.as_deref().unwrap_or(""));
            }
            if entries.is_empty() {
                println!("(no proxy is connected)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacking_and_lagging_come_first() {
        let json = serde_json::json!([
            {"pod": "demo/a", "last_sent_version": "v2", "last_acked_version": "v2"},
            {"pod": "demo/b", "last_sent_version": "v2", "last_acked_version": "v1"},
            {"pod": "demo/c", "last_sent_version": "v2", "last_acked_version": "v1", "last_nack_error": "bad regex"},
        ]);
        let e = parse(&json).expect("parses");
        let order: Vec<_> = e.iter().map(|x| (x.pod.as_str(), x.sync())).collect();
        assert_eq!(
            order,
            vec![
                ("demo/c", Sync::Nacked),
                ("demo/b", Sync::Lagging),
                ("demo/a", Sync::Current)
            ]
        );
    }
}
