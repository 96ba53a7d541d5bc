//! A readable, serialisable report of a compilation, for `weft compile`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use weft_smi::hub;

use super::types::*;
use super::{Compiled, Event, ProxyConfig};
use crate::model::ObjectKey;

/// A file that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

/// What one proxy is told, in readable form.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyReport {
    /// Config version (content hash).
    pub version: String,
    pub inbound: InboundPolicy,
    /// One entry per service, by `outbound:<svc>.<ns>` name.
    pub outbound: BTreeMap<String, OutboundService>,
    /// One entry per service port, by `endpoints:<svc>.<ns>:<port>` name.
    pub endpoints: BTreeMap<String, EndpointSet>,
}

impl ProxyReport {
    pub fn from_config(cfg: &ProxyConfig) -> ProxyReport {
        let inbound = match &cfg.inbound.resource {
            ResourceKind::Inbound(i) => i.clone(),
            _ => InboundPolicy::default(),
        };
        let mut outbound = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for r in cfg.shared.iter() {
            match &r.resource {
                ResourceKind::Outbound(o) => {
                    outbound.insert(r.name.clone(), o.clone());
                }
                ResourceKind::Endpoints(e) => {
                    endpoints.insert(r.name.clone(), e.clone());
                }
                ResourceKind::Inbound(_) => {}
            }
        }
        ProxyReport {
            version: cfg.version.clone(),
            inbound,
            outbound,
            endpoints,
        }
    }
}

/// Status of one SMI object.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<hub::Condition>,
}

/// Everything `weft compile` prints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompileReport {
    /// By `<namespace>/<pod>`.
    pub proxies: BTreeMap<String, ProxyReport>,
    pub objects: Vec<ObjectReport>,
    pub events: Vec<Event>,
    /// Files that could not be loaded (they are left out of the compilation).
    pub load_errors: Vec<LoadError>,
    /// Documents of kinds weft does not read, as `<file>: <apiVersion/kind> <name>`.
    pub ignored: Vec<String>,
}

impl CompileReport {
    /// A report of a compiled snapshot.
    pub fn from_compiled(compiled: &Compiled) -> CompileReport {
        CompileReport {
            proxies: compiled
                .proxies()
                .iter()
                .map(|(k, cfg)| (k.to_string(), ProxyReport::from_config(&cfg)))
                .collect(),
            objects: compiled
                .statuses()
                .iter()
                .map(|(k, conds): (&ObjectKey, _)| ObjectReport {
                    kind: k.kind.as_str().to_string(),
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    conditions: conds.clone(),
                })
                .collect(),
            events: compiled.events().into_iter().cloned().collect(),
            load_errors: Vec::new(),
            ignored: Vec::new(),
        }
    }

    /// Keeps only one proxy (`<namespace>/<pod>`); returns false when it is not in the report.
    pub fn retain_proxy(&mut self, proxy: &str) -> bool {
        self.proxies.retain(|k, _| k == proxy);
        !self.proxies.is_empty()
    }
}
