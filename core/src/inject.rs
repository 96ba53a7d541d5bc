//! The proxy injector: adds the `weft-proxy` sidecar and the `weft-init` iptables init container
//! to pods.
//!
//! Everything here is pure (JSON in, JSON out). The operator's webhook (`handle_admission` in
//! `weft_operator::inject`) looks up the pod's Namespace and calls [`review_response`];
//! `weft inject -f FILE` calls [`inject_manifest`].
//!
//! Injection is idempotent: containers, volumes and labels are upserted by name, so injecting an
//! injected pod with the same settings changes nothing (and with new settings, upgrades it).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Pod / Namespace annotation that turns injection on (`enabled`) or off (`disabled`).
pub const INJECT_ANNOTATION: &str = "weft.io/inject";
/// Pod label set by the injector: the pod is meshed, with this proxy version.
pub const PROXY_VERSION_LABEL: &str = "weft.io/proxy-version";
/// Pod annotation: comma-separated inbound ports the proxy does not intercept.
pub const SKIP_INBOUND_ANNOTATION: &str = "weft.io/skip-inbound-ports";
/// Pod annotation: comma-separated outbound ports the proxy does not intercept.
pub const SKIP_OUTBOUND_ANNOTATION: &str = "weft.io/skip-outbound-ports";
/// Pod or Namespace annotation: the OTLP/gRPC endpoint the proxy exports spans to
/// (`WEFT_PROXY_TRACE_COLLECTOR`, docs/tracing.md); empty turns the chart's default off.
pub const TRACE_COLLECTOR_ANNOTATION: &str = "weft.io/trace-collector";
/// The proxy's variable for [`TRACE_COLLECTOR_ANNOTATION`].
pub const TRACE_COLLECTOR_ENV: &str = "WEFT_PROXY_TRACE_COLLECTOR";
/// Pod or Namespace annotation: how long the proxy keeps a client's idle HTTP/1 keep-alive
/// connection (`WEFT_PROXY_HTTP1_IDLE_TIMEOUT`, docs/proxy.md "Connections and timeouts");
/// overrides the chart's `proxy.http1IdleTimeout`.
pub const HTTP1_IDLE_TIMEOUT_ANNOTATION: &str = "weft.io/http1-idle-timeout";
/// The proxy's variable for [`HTTP1_IDLE_TIMEOUT_ANNOTATION`].
pub const HTTP1_IDLE_TIMEOUT_ENV: &str = "WEFT_PROXY_HTTP1_IDLE_TIMEOUT";
/// Pod or Namespace annotation: `on-demand` or `push-all`, the proxy's discovery mode
/// (`WEFT_PROXY_DISCOVERY_MODE`, docs/proxy.md "On-demand discovery"); overrides the mesh-wide
/// default (the operator's `--discovery-mode`, chart value `discovery.mode`).
pub const DISCOVERY_MODE_ANNOTATION: &str = "weft.io/discovery-mode";
/// The proxy's variable for [`DISCOVERY_MODE_ANNOTATION`].
pub const DISCOVERY_MODE_ENV: &str = "WEFT_PROXY_DISCOVERY_MODE";
/// Pod annotation: comma-separated `<svc>.<ns>` an on-demand proxy watches from the start
/// (`WEFT_PROXY_OUTBOUND_SERVICES`), so that the first request to them waits for nothing.
pub const OUTBOUND_SERVICES_ANNOTATION: &str = "weft.io/outbound-services";
/// The proxy's variable for [`OUTBOUND_SERVICES_ANNOTATION`].
pub const OUTBOUND_SERVICES_ENV: &str = "WEFT_PROXY_OUTBOUND_SERVICES";
/// At most this many pre-subscribed services are copied (the proxy watches at most 1024 names).
pub const MAX_OUTBOUND_SERVICES: usize = 256;
/// Name of the injected sidecar container.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// Name of the injected init container.
pub const INIT_CONTAINER: &str = "weft-init";
/// Name of the projected ServiceAccount token volume.
pub const TOKEN_VOLUME: &str = "weft-identity-token";
/// Audience of the projected token the proxy presents to get its certificate.
pub const TOKEN_AUDIENCE: &str = "weft.io/identity";
/// Where the proxy container sees the token folder.
pub const TOKEN_DIR: &str = "/var/run/secrets/weft.io/identity";

/// What the injector adds. Built from the operator's environment with [`InjectSettings::from_env`]
/// (the Helm chart sets those variables on the operator Deployment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    /// Image of the proxy (and of the init container, which runs `weft-proxy-init` from it).
    pub proxy_image: String,
    pub image_pull_policy: String,
    /// Value of the `weft.io/proxy-version` label.
    pub proxy_version: String,
    /// The uid the proxy runs as; its own traffic is not redirected.
    pub proxy_uid: i64,
    /// `WEFT_PROXY_CONTROL_ADDR` given to proxies (the operator's discovery Service).
    pub control_addr: String,
    /// `WEFT_LOG` given to proxies.
    pub log_level: String,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    /// Projected token lifetime.
    pub token_expiration_seconds: i64,
    /// PEM trust anchors given to proxies as `WEFT_PROXY_TRUST_ANCHORS`: they verify the
    /// operator's discovery certificate (TLS) and their peers against them. `None`: the variable
    /// is not set and proxies talk to the operator in plaintext (with a warning).
    pub trust_anchors_pem: Option<String>,
    /// The mesh-wide trace collector (chart value `proxy.traceCollector`, given to the operator
    /// as `WEFT_PROXY_TRACE_COLLECTOR`); a `weft.io/trace-collector` annotation overrides it.
    pub trace_collector: Option<String>,
    /// The proxy's tap port (`WEFT_PROXY_TAP_ADDR`; declared as a container port and never
    /// redirected). docs/tap.md.
    pub tap_port: u16,
    /// Who may tap the proxy (`WEFT_PROXY_TAP_IDENTITY`): the operator's SPIFFE ID. `None`: the
    /// variable is not set and the proxy falls back to `WEFT_PROXY_CONTROL_IDENTITY`.
    pub tap_identity: Option<String>,
    /// The mesh-wide discovery mode given to proxies: `true` when the operator serves on demand
    /// (`--discovery-mode on-demand`, chart value `discovery.mode`); a `weft.io/discovery-mode`
    /// annotation overrides it per pod or namespace.
    pub on_demand: bool,
    /// The mesh-wide HTTP/1 idle timeout (chart value `proxy.http1IdleTimeout`, given to the
    /// operator as `WEFT_PROXY_HTTP1_IDLE_TIMEOUT`), as written; `None`: the proxy's default
    /// (an hour). A `weft.io/http1-idle-timeout` annotation overrides it.
    pub http1_idle_timeout: Option<String>,
}

impl Default for InjectSettings {
    fn default() -> Self {
        Self {
            proxy_image: "weft/proxy:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            proxy_uid: 2102,
            control_addr: "weft-discovery.weft-system.svc.cluster.local:8086".into(),
            log_level: "info".into(),
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            cpu_request: Some("10m".into()),
            memory_request: Some("20Mi".into()),
            cpu_limit: None,
            memory_limit: Some("250Mi".into()),
            token_expiration_seconds: 3600,
            trust_anchors_pem: None,
            trace_collector: None,
            tap_port: 4190,
            tap_identity: None,
            on_demand: false,
            http1_idle_timeout: None,
        }
    }
}

/// Errors of the injector.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("invalid YAML in document {doc}: {source}")]
    Yaml {
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("cannot serialise the result: {0}")]
    Serialize(#[from] serde_yaml::Error),
    #[error("invalid pod spec: {0}")]
    InvalidPod(String),
    #[error("invalid environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
}

impl InjectSettings {
    /// Reads the settings from environment variables, defaults for the unset ones:
    /// `WEFT_PROXY_IMAGE`, `WEFT_PROXY_IMAGE_PULL_POLICY`, `WEFT_PROXY_VERSION`, `WEFT_PROXY_UID`,
    /// `WEFT_INJECT_CONTROL_ADDR`, `WEFT_PROXY_LOG_LEVEL`, `WEFT_PROXY_CPU_REQUEST`,
    /// `WEFT_PROXY_MEMORY_REQUEST`, `WEFT_PROXY_CPU_LIMIT`, `WEFT_PROXY_MEMORY_LIMIT`
    /// (an empty value removes a request/limit).
    pub fn from_env() -> Result<Self, InjectError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`InjectSettings::from_env`], with an explicit variable lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, InjectError> {
        let mut s = Self::default();
        if let Some(v) = get("WEFT_PROXY_IMAGE") {
            s.proxy_image = v;
        }
        if let Some(v) = get("WEFT_PROXY_IMAGE_PULL_POLICY") {
            s.image_pull_policy = v;
        }
        if let Some(v) = get("WEFT_PROXY_VERSION") {
            s.proxy_version = v;
        }
        if let Some(v) = get("WEFT_PROXY_UID") {
            s.proxy_uid = v.trim().parse().map_err(|e| InjectError::Env {
                name: "WEFT_PROXY_UID",
                reason: format!("{v:?}: {e}"),
            })?;
        }
        if let Some(v) = get("WEFT_INJECT_CONTROL_ADDR") {
            s.control_addr = v;
        }
        if let Some(v) = get("WEFT_PROXY_LOG_LEVEL") {
            s.log_level = v;
        }
        let opt = |v: String| if v.trim().is_empty() { None } else { Some(v) };
        if let Some(v) = get("WEFT_PROXY_CPU_REQUEST") {
            s.cpu_request = opt(v);
        }
        if let Some(v) = get("WEFT_PROXY_MEMORY_REQUEST") {
            s.memory_request = opt(v);
        }
        if let Some(v) = get("WEFT_PROXY_CPU_LIMIT") {
            s.cpu_limit = opt(v);
        }
        if let Some(v) = get("WEFT_PROXY_MEMORY_LIMIT") {
            s.memory_limit = opt(v);
        }
        if let Some(v) = get(TRACE_COLLECTOR_ENV) {
            s.trace_collector = match opt(v) {
                None => None,
                Some(v) if is_collector_url(&v) => Some(v.trim().to_string()),
                Some(v) => {
                    return Err(InjectError::Env {
                        name: TRACE_COLLECTOR_ENV,
                        reason: format!("{v:?}: expected an http:// URL"),
                    })
                }
            };
        }
        if let Some(v) = get(HTTP1_IDLE_TIMEOUT_ENV) {
            s.http1_idle_timeout = match opt(v) {
                None => None,
                Some(v) => match weft_common::reliability::http1_idle_timeout(&v) {
                    Ok(_) => Some(v.trim().to_string()),
                    Err(reason) => {
                        return Err(InjectError::Env {
                            name: HTTP1_IDLE_TIMEOUT_ENV,
                            reason,
                        })
                    }
                },
            };
        }
        Ok(s)
    }
}

/// Whether a pod should be injected: the pod annotation wins (`disabled` always wins), then the
/// namespace annotation. Host-network pods are never injected (their iptables are the node's).
pub fn should_inject(pod: &Value, namespace_annotations: &BTreeMap<String, String>) -> bool {
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    let pod_value = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str);
    match pod_value {
        Some("disabled") => false,
        Some("enabled") => true,
        _ => namespace_annotations
            .get(INJECT_ANNOTATION)
            .is_some_and(|v| v == "enabled"),
    }
}

/// Parses a comma-separated port list annotation (`"25,3306, 8000-8010"` is kept as written but
/// validated: numbers or `a-b` ranges).
fn parse_ports(value: &str) -> Result<Vec<String>, InjectError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let valid = match part.split_once('-') {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => a > 0 && a <= b,
                _ => false,
            },
            None => part.parse::<u16>().is_ok_and(|p| p > 0),
        };
        if !valid {
            return Err(InjectError::InvalidPod(format!(
                "invalid port {part:?} in a skip-ports annotation"
            )));
        }
        out.push(part.to_string());
    }
    Ok(out)
}

/// What the proxy accepts as `WEFT_PROXY_TRACE_COLLECTOR` (weft-proxy's env check): a
/// plaintext `http://` URL without whitespace (TLS to the collector is not supported).
fn is_collector_url(v: &str) -> bool {
    let v = v.trim();
    v.strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty())
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The trace collector of a pod: its `weft.io/trace-collector` annotation, else its Namespace's,
/// else the chart's default; an empty annotation means none. A value that is not a URL is
/// ignored (tracing off for the pod): a bad annotation must not stop the proxy from starting.
pub fn trace_collector(
    pod: &Value,
    namespace_annotations: &BTreeMap<String, String>,
    settings: &InjectSettings,
) -> Option<String> {
    let chosen = annotation(pod, TRACE_COLLECTOR_ANNOTATION)
        .or(namespace_annotations
            .get(TRACE_COLLECTOR_ANNOTATION)
            .map(String::as_str))
        .map(str::to_string)
        .or_else(|| settings.trace_collector.clone())?;
    let chosen = chosen.trim();
    is_collector_url(chosen).then(|| chosen.to_string())
}

/// The HTTP/1 idle timeout given to a pod's proxy: its `weft.io/http1-idle-timeout` annotation,
/// else its Namespace's, else the chart's; `None`: the proxy's default. A value the proxy would
/// refuse ([`weft_common::reliability::http1_idle_timeout`]) is ignored and the next level
/// decides: a bad annotation never stops the proxy from starting.
pub fn http1_idle_timeout(
    pod: &Value,
    namespace_annotations: &BTreeMap<String, String>,
    settings: &InjectSettings,
) -> Option<String> {
    let valid = |v: &str| {
        let v = v.trim();
        weft_common::reliability::http1_idle_timeout(v)
            .is_ok()
            .then(|| v.to_string())
    };
    annotation(pod, HTTP1_IDLE_TIMEOUT_ANNOTATION)
        .and_then(valid)
        .or_else(|| {
            namespace_annotations
                .get(HTTP1_IDLE_TIMEOUT_ANNOTATION)
                .and_then(|v| valid(v))
        })
        .or_else(|| settings.http1_idle_timeout.as_deref().and_then(valid))
}

/// Whether a pod's proxy asks for on-demand discovery: its `weft.io/discovery-mode` annotation,
/// else its Namespace's, else the mesh-wide default. An unknown value is ignored (the next one
/// decides): a bad annotation never stops the proxy from starting. Push-all proxies served by an
/// on-demand operator, and on-demand proxies served by a push-all one, both work (the operator
/// decides what it sends; docs/proxy.md).
pub fn on_demand(
    pod: &Value,
    namespace_annotations: &BTreeMap<String, String>,
    settings: &InjectSettings,
) -> bool {
    let parse = |v: &str| match v.trim() {
        "on-demand" => Some(true),
        "push-all" => Some(false),
        _ => None,
    };
    annotation(pod, DISCOVERY_MODE_ANNOTATION)
        .and_then(parse)
        .or_else(|| {
            namespace_annotations
                .get(DISCOVERY_MODE_ANNOTATION)
                .and_then(|v| parse(v))
        })
        .unwrap_or(settings.on_demand)
}

/// The pod's pre-subscribed services (`weft.io/outbound-services`, comma-separated
/// `<svc>.<ns>`): the valid entries, normalised and joined with `,` (`None` when there are
/// none), and one warning per ignored entry (not a `<svc>.<ns>` of DNS labels, or over
/// [`MAX_OUTBOUND_SERVICES`]). Never an error: a bad entry must not stop injection.
pub fn outbound_services(pod: &Value) -> (Option<String>, Vec<String>) {
    let Some(raw) = annotation(pod, OUTBOUND_SERVICES_ANNOTATION) else {
        return (None, Vec::new());
    };
    let mut valid: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let ok = entry
            .split_once('.')
            .is_some_and(|(svc, ns)| is_dns_label(svc) && is_dns_label(ns));
        if !ok {
            warnings.push(format!(
                "weft: {OUTBOUND_SERVICES_ANNOTATION}: ignored {:?} (expected <service>.<namespace>)",
                truncate(entry, 80)
            ));
        } else if valid.len() >= MAX_OUTBOUND_SERVICES {
            warnings.push(format!(
                "weft: {OUTBOUND_SERVICES_ANNOTATION}: ignored {:?} (more than {MAX_OUTBOUND_SERVICES} services)",
                truncate(entry, 80)
            ));
        } else if !valid.iter().any(|v| v == entry) {
            valid.push(entry.to_string());
        }
    }
    let joined = (!valid.is_empty()).then(|| valid.join(","));
    (joined, warnings)
}

/// A Kubernetes object name that is one DNS label (RFC 1123: 1-63 lowercase letters, digits
/// and `-`, starting and ending with a letter or digit), as Service and Namespace names are.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
        && b.iter().all(|c| inner(c) || *c == b'-')
}

/// At most `max` characters of `s` (warnings quote user input, bounded).
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn resources(settings: &InjectSettings) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    if let Some(v) = &settings.cpu_request {
        requests.insert("cpu".into(), json!(v));
    }
    if let Some(v) = &settings.memory_request {
        requests.insert("memory".into(), json!(v));
    }
    if let Some(v) = &settings.cpu_limit {
        limits.insert("cpu".into(), json!(v));
    }
    if let Some(v) = &settings.memory_limit {
        limits.insert("memory".into(), json!(v));
    }
    let mut r = Map::new();
    if !requests.is_empty() {
        r.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        r.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(r)
}

/// The sidecar container.
pub fn proxy_container(settings: &InjectSettings) -> Value {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": [
            {"name": "WEFT_POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "WEFT_POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "WEFT_PROXY_POD", "value": "$(WEFT_POD_NAMESPACE)/$(WEFT_POD_NAME)"},
            {"name": "WEFT_PROXY_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "WEFT_PROXY_CONTROL_ADDR", "value": settings.control_addr},
            {"name": "WEFT_PROXY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
            {"name": "WEFT_PROXY_INBOUND_ADDR", "value": format!("0.0.0.0:{}", settings.inbound_port)},
            {"name": "WEFT_PROXY_OUTBOUND_ADDR", "value": format!("127.0.0.1:{}", settings.outbound_port)},
            {"name": "WEFT_PROXY_ADMIN_ADDR", "value": format!("0.0.0.0:{}", settings.admin_port)},
            {"name": "WEFT_PROXY_TAP_ADDR", "value": format!("0.0.0.0:{}", settings.tap_port)},
            {"name": "WEFT_LOG", "value": settings.log_level},
        ],
        "ports": [
            {"name": "weft-proxy", "containerPort": settings.inbound_port, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": settings.admin_port, "protocol": "TCP"},
            {"name": "weft-tap", "containerPort": settings.tap_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": settings.admin_port},
            "initialDelaySeconds": 1,
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": settings.admin_port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "resources": resources(settings),
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let (Some(anchors), Some(env)) =
        (&settings.trust_anchors_pem, container["env"].as_array_mut())
    {
        env.push(json!({"name": "WEFT_PROXY_TRUST_ANCHORS", "value": anchors}));
    }
    if let (Some(id), Some(env)) = (&settings.tap_identity, container["env"].as_array_mut()) {
        env.push(json!({"name": "WEFT_PROXY_TAP_IDENTITY", "value": id}));
    }
    container
}

/// The init container that installs the iptables redirection, for this pod's annotations.
pub fn init_container(pod: &Value, settings: &InjectSettings) -> Result<Value, InjectError> {
    // The admin and tap ports are the proxy's own: never redirected to its inbound listener.
    let mut skip_in = vec![
        settings.admin_port.to_string(),
        settings.tap_port.to_string(),
    ];
    if let Some(v) = annotation(pod, SKIP_INBOUND_ANNOTATION) {
        for p in parse_ports(v)? {
            if !skip_in.contains(&p) {
                skip_in.push(p);
            }
        }
    }
    let skip_out = match annotation(pod, SKIP_OUTBOUND_ANNOTATION) {
        Some(v) => parse_ports(v)?,
        None => Vec::new(),
    };
    let mut args = vec![
        "--proxy-uid".to_string(),
        settings.proxy_uid.to_string(),
        "--inbound-port".to_string(),
        settings.inbound_port.to_string(),
        "--outbound-port".to_string(),
        settings.outbound_port.to_string(),
        "--skip-inbound-ports".to_string(),
        skip_in.join(","),
    ];
    if !skip_out.is_empty() {
        args.push("--skip-outbound-ports".to_string());
        args.push(skip_out.join(","));
    }
    Ok(json!({
        "name": INIT_CONTAINER,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["weft-proxy-init"],
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"memory": "50Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }))
}

/// The projected ServiceAccount token volume (audience `weft.io/identity`).
pub fn token_volume(settings: &InjectSettings) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": TOKEN_AUDIENCE,
                    "expirationSeconds": settings.token_expiration_seconds,
                    "path": "token",
                }
            }]
        }
    })
}

/// Inserts or replaces (by `name`) `item` in the array at `key` of `obj`; `first` puts a new item
/// at the front (the init container must run before the app's own init containers).
fn upsert_named(
    obj: &mut Map<String, Value>,
    key: &str,
    item: Value,
    first: bool,
) -> Result<(), InjectError> {
    let name = item.get("name").cloned();
    let list = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if list.is_null() {
        *list = Value::Array(Vec::new());
    }
    let Some(list) = list.as_array_mut() else {
        return Err(InjectError::InvalidPod(format!("spec.{key} is not a list")));
    };
    if let Some(existing) = list.iter_mut().find(|c| c.get("name") == name.as_ref()) {
        *existing = item;
    } else if first {
        list.insert(0, item);
    } else {
        list.push(item);
    }
    Ok(())
}

fn object_at<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, InjectError> {
    let Some(obj) = v.as_object_mut() else {
        return Err(InjectError::InvalidPod("expected an object".into()));
    };
    let entry = obj.entry(key.to_string()).or_insert_with(|| json!({}));
    if entry.is_null() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .ok_or_else(|| InjectError::InvalidPod(format!("{key} is not an object")))
}

/// Injects a pod (or a pod template: an object with `metadata` and `spec`) unconditionally.
/// Returns the mutated copy.
pub fn inject_pod(pod: &Value, settings: &InjectSettings) -> Result<Value, InjectError> {
    inject_pod_of(pod, settings, owner_workload(pod), &BTreeMap::new())
}

/// `WEFT_PROXY_WORKLOAD` env var name (the proxy's metrics label the pod with its workload).
pub const WORKLOAD_ENV: &str = "WEFT_PROXY_WORKLOAD";

/// `<kind>/<name>` of the workload that owns `pod` (a JSON Pod or pod template), from its
/// controller `ownerReferences` (what the admission webhook sees); see [`workload_of`].
pub fn owner_workload(pod: &Value) -> Option<String> {
    let owners = pod.pointer("/metadata/ownerReferences")?.as_array()?;
    let hash = pod
        .pointer("/metadata/labels/pod-template-hash")
        .and_then(Value::as_str);
    workload_of(
        owners.iter().filter_map(|o| {
            Some(OwnerRef {
                kind: o.get("kind").and_then(Value::as_str)?,
                name: o.get("name").and_then(Value::as_str)?,
                controller: o.get("controller").and_then(Value::as_bool) == Some(true),
            })
        }),
        hash,
    )
}

/// One `ownerReferences` entry, as [`workload_of`] reads it.
#[derive(Clone, Copy, Debug)]
pub struct OwnerRef<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub controller: bool,
}

/// The one rule for a pod's workload, `<kind>/<name>`: its controller owner (else its first
/// owner); a ReplicaSet named `<deployment>-<pod-template-hash>` (the pod's
/// `pod-template-hash` label) is its Deployment's; StatefulSet, DaemonSet, Job and a bare
/// ReplicaSet are themselves. `None` when there is no such owner. The injector sets it as the
/// proxy's `WEFT_PROXY_WORKLOAD`; the compiler sends it as each endpoint's `workload`.
pub fn workload_of<'a>(
    owners: impl IntoIterator<Item = OwnerRef<'a>>,
    pod_template_hash: Option<&str>,
) -> Option<String> {
    let mut first = None;
    let mut controller = None;
    for o in owners {
        if first.is_none() {
            first = Some(o);
        }
        if o.controller {
            controller = Some(o);
            break;
        }
    }
    let OwnerRef { kind, name, .. } = controller.or(first)?;
    match kind {
        "ReplicaSet" => {
            match pod_template_hash.and_then(|h| name.strip_suffix(h)?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    Some(format!("deployment/{deployment}"))
                }
                _ => Some(format!("replicaset/{name}")),
            }
        }
        "StatefulSet" | "DaemonSet" | "Job" => Some(format!("{}/{name}", kind.to_lowercase())),
        _ => None,
    }
}

/// [`inject_pod`] with the proxy told `workload` (`<kind>/<name>`) as `WEFT_PROXY_WORKLOAD`.
/// `namespace_annotations` (the pod's Namespace's) choose what the proxy's environment
/// may take from them (trace collector, discovery mode, HTTP/1 idle timeout).
fn inject_pod_of(
    pod: &Value,
    settings: &InjectSettings,
    workload: Option<String>,
    namespace_annotations: &BTreeMap<String, String>,
) -> Result<Value, InjectError> {
    let mut out = pod.clone();
    if !out.is_object() {
        return Err(InjectError::InvalidPod("a pod must be an object".into()));
    }
    let init = init_container(pod, settings)?;
    {
        let metadata = object_at(&mut out, "metadata")?;
        let labels = metadata.entry("labels").or_insert_with(|| json!({}));
        if labels.is_null() {
            *labels = json!({});
        }
        let Some(labels) = labels.as_object_mut() else {
            return Err(InjectError::InvalidPod(
                "metadata.labels is not an object".into(),
            ));
        };
        labels.insert(PROXY_VERSION_LABEL.into(), json!(settings.proxy_version));
    }
    let spec = object_at(&mut out, "spec")?;
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::InvalidPod("spec.containers is missing".into()));
    }
    upsert_named(spec, "initContainers", init, true)?;
    let mut proxy = proxy_container(settings);
    if let (Some(workload), Some(env)) = (workload, proxy["env"].as_array_mut()) {
        env.push(json!({"name": WORKLOAD_ENV, "value": workload}));
    }
    if let (Some(collector), Some(env)) = (
        trace_collector(pod, namespace_annotations, settings),
        proxy["env"].as_array_mut(),
    ) {
        env.push(json!({"name": TRACE_COLLECTOR_ENV, "value": collector}));
    }
    if let Some(env) = proxy["env"].as_array_mut() {
        if on_demand(pod, namespace_annotations, settings) {
            env.push(json!({"name": DISCOVERY_MODE_ENV, "value": "on-demand"}));
        }
        if let (Some(services), _) = outbound_services(pod) {
            env.push(json!({"name": OUTBOUND_SERVICES_ENV, "value": services}));
        }
        if let Some(idle) = http1_idle_timeout(pod, namespace_annotations, settings) {
            env.push(json!({"name": HTTP1_IDLE_TIMEOUT_ENV, "value": idle}));
        }
    }
    upsert_named(spec, "containers", proxy, false)?;
    upsert_named(spec, "volumes", token_volume(settings), false)?;
    Ok(out)
}

/// A JSONPatch (RFC 6902) that turns `before` into `after`, at the granularity the injector
/// changes: labels, init containers, containers, volumes (`add` replaces an existing member).
pub fn json_patch(before: &Value, after: &Value) -> Value {
    let mut ops = Vec::new();
    if before.get("metadata").is_none() {
        if let Some(m) = after.get("metadata") {
            ops.push(json!({"op": "add", "path": "/metadata", "value": m}));
        }
    } else {
        for key in ["labels", "annotations"] {
            let (b, a) = (
                before.pointer(&format!("/metadata/{key}")),
                after.pointer(&format!("/metadata/{key}")),
            );
            if b != a {
                if let Some(a) = a {
                    ops.push(json!({"op": "add", "path": format!("/metadata/{key}"), "value": a}));
                }
            }
        }
    }
    for key in ["initContainers", "containers", "volumes"] {
        let (b, a) = (
            before.pointer(&format!("/spec/{key}")),
            after.pointer(&format!("/spec/{key}")),
        );
        if b != a {
            if let Some(a) = a {
                ops.push(json!({"op": "add", "path": format!("/spec/{key}"), "value": a}));
            }
        }
    }
    Value::Array(ops)
}

/// The admission response for an AdmissionReview (v1 or v1beta1), given the annotations of the
/// pod's Namespace. Never fails the request: errors are logged and the pod is admitted unchanged
/// (the webhook's `failurePolicy` decides for unreachable webhooks, not for bad pods).
pub fn review_response(
    review: &Value,
    settings: &InjectSettings,
    namespace_annotations: &BTreeMap<String, String>,
) -> Value {
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let uid = review.pointer("/request/uid").cloned().unwrap_or(json!(""));
    let mut response = json!({"uid": uid, "allowed": true});
    let pod = review.pointer("/request/object");
    let is_pod = review.pointer("/request/kind/kind").and_then(Value::as_str) == Some("Pod");
    if let (Some(pod), true) = (pod, is_pod) {
        if should_inject(pod, namespace_annotations) {
            match inject_pod_of(pod, settings, owner_workload(pod), namespace_annotations) {
                Ok(after) => {
                    let (_, warnings) = outbound_services(pod);
                    if !warnings.is_empty() {
                        response["warnings"] = json!(warnings);
                    }
                    let patch = json_patch(pod, &after);
                    if patch.as_array().is_some_and(|p| !p.is_empty()) {
                        let bytes = serde_json::to_vec(&patch).unwrap_or_default();
                        response["patchType"] = json!("JSONPatch");
                        response["patch"] = json!(base64_encode(&bytes));
                    }
                }
                Err(e) => {
                    response["warnings"] = json!([format!("weft: proxy not injected: {e}")]);
                }
            }
        }
    }
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

/// The pod template inside a workload object, if it has one.
/// A JSONPatch in an AdmissionReview response is standard base64 with padding.
fn base64_encode(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

fn pod_template_mut(obj: &mut Value) -> Option<&mut Value> {
    let kind = obj.get("kind").and_then(Value::as_str)?.to_string();
    match kind.as_str() {
        "Pod" => Some(obj),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => obj.pointer_mut("/spec/template"),
        "CronJob" => obj.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn inject_object(obj: &mut Value, settings: &InjectSettings) -> Result<(), InjectError> {
    if obj.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, settings)?;
            }
        }
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(template) = pod_template_mut(obj) {
        let disabled = annotation(template, INJECT_ANNOTATION) == Some("disabled");
        let host_network = template
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            == Some(true);
        if !disabled && !host_network {
            let workload = match kind.as_str() {
                "Pod" => owner_workload(template),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob"
                    if name != "?" =>
                {
                    Some(format!("{}/{name}", kind.to_lowercase()))
                }
                _ => None,
            };
            *template = inject_pod_of(template, settings, workload, &BTreeMap::new())
                .map_err(|e| InjectError::InvalidPod(format!("{name}: {e}")))?;
        }
    }
    Ok(())
}

/// `weft inject -f FILE`: injects every workload (Pod, Deployment, StatefulSet, DaemonSet,
/// ReplicaSet, ReplicationController, Job, CronJob, and those inside a `List`) of a multi-document
/// YAML manifest, except pods annotated `weft.io/inject: disabled` and host-network pods. Other
/// documents are passed through. Returns the documents joined by `---`.
pub fn inject_manifest(yaml: &str, settings: &InjectSettings) -> Result<String, InjectError> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let mut value =
            Value::deserialize(doc).map_err(|source| InjectError::Yaml { doc: i + 1, source })?;
        if value.is_null() {
            continue;
        }
        inject_object(&mut value, settings)?;
        docs.push(serde_yaml::to_string(&value)?);
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "annotations": annotations},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web:v1"}]}
        })
    }

    fn ns(v: Option<&str>) -> BTreeMap<String, String> {
        v.map(|v| BTreeMap::from([(INJECT_ANNOTATION.to_string(), v.to_string())]))
            .unwrap_or_default()
    }

    #[test]
    fn inject_decision_table() {
        let cases = [
            (json!({}), None, false),
            (json!({}), Some("enabled"), true),
            (json!({"weft.io/inject": "enabled"}), None, true),
            (
                json!({"weft.io/inject": "disabled"}),
                Some("enabled"),
                false,
            ),
            (json!({"weft.io/inject": "enabled"}), Some("disabled"), true),
            (json!({}), Some("disabled"), false),
        ];
        for (ann, nsv, want) in cases {
            assert_eq!(
                should_inject(&pod(ann.clone()), &ns(nsv)),
                want,
                "{ann} {nsv:?}"
            );
        }
        let mut host = pod(json!({"weft.io/inject": "enabled"}));
        host["spec"]["hostNetwork"] = json!(true);
        assert!(!should_inject(&host, &ns(Some("enabled"))));
    }

    #[test]
    fn injected_pod_has_proxy_init_volume_and_label() {
        let s = InjectSettings::default();
        let out = inject_pod(&pod(json!({"weft.io/skip-outbound-ports": "3306, 25"})), &s).unwrap();
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["name"], "app");
        let proxy = &containers[1];
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        let env: BTreeMap<_, _> = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e.clone()))
            .collect();
        assert_eq!(env["WEFT_PROXY_CONTROL_ADDR"]["value"], s.control_addr);
        assert_eq!(
            env["WEFT_PROXY_TOKEN_FILE"]["value"],
            "/var/run/secrets/weft.io/identity/token"
        );
        assert_eq!(
            env["WEFT_PROXY_SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.serviceAccountName"
        );
        assert_eq!(
            env["WEFT_PROXY_POD"]["value"],
            "$(WEFT_POD_NAMESPACE)/$(WEFT_POD_NAME)"
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(init["name"], INIT_CONTAINER);
        let args: Vec<&str> = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--proxy-uid",
                "2102",
                "--inbound-port",
                "4143",
                "--outbound-port",
                "4140",
                "--skip-inbound-ports",
                "4191,4190",
                "--skip-outbound-ports",
                "3306,25"
            ]
        );
        let vol = &out["spec"]["volumes"][0];
        assert_eq!(
            vol["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            TOKEN_AUDIENCE
        );
        assert_eq!(
            out["metadata"]["labels"][PROXY_VERSION_LABEL],
            s.proxy_version
        );
    }

    #[test]
    fn injection_is_idempotent() {
        let s = InjectSettings::default();
        let once = inject_pod(&pod(json!({})), &s).unwrap();
        let twice = inject_pod(&once, &s).unwrap();
        assert_eq!(once, twice);
        assert_eq!(json_patch(&once, &twice), json!([]));
    }

    #[test]
    fn trust_anchors_reach_the_proxy_and_reinjection_changes_nothing() {
        let anchors = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let s = InjectSettings {
            trust_anchors_pem: Some(anchors.to_string()),
            ..InjectSettings::default()
        };
        let once = inject_pod(&pod(json!({})), &s).unwrap();
        let proxy = once["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == PROXY_CONTAINER)
            .unwrap();
        let env: Vec<_> = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "WEFT_PROXY_TRUST_ANCHORS")
            .collect();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0]["value"], anchors);
        let twice = inject_pod(&once, &s).unwrap();
        assert_eq!(once, twice);
        assert_eq!(json_patch(&once, &twice), json!([]));
        // A manifest injected offline without anchors keeps working (plaintext to the operator).
        let plain = inject_pod(&pod(json!({})), &InjectSettings::default()).unwrap();
        assert!(!plain.to_string().contains("WEFT_PROXY_TRUST_ANCHORS"));
    }

    #[test]
    fn existing_init_containers_run_after_weft_init() {
        let mut p = pod(json!({}));
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        let out = inject_pod(&p, &InjectSettings::default()).unwrap();
        assert_eq!(out["spec"]["initContainers"][0]["name"], INIT_CONTAINER);
        assert_eq!(out["spec"]["initContainers"][1]["name"], "migrate");
    }

    #[test]
    fn bad_skip_ports_is_an_error_not_a_panic() {
        let err = inject_pod(
            &pod(json!({"weft.io/skip-inbound-ports": "80,http"})),
            &InjectSettings::default(),
        );
        assert!(matches!(err, Err(InjectError::InvalidPod(_))));
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"kind": "Pod"}, "namespace": "shop",
                        "object": pod(json!({"weft.io/inject": "enabled", "weft.io/skip-inbound-ports": "x"}))}
        });
        let resp = review_response(&review, &InjectSettings::default(), &BTreeMap::new());
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());
    }

    #[test]
    fn admission_review_gets_a_patch_that_applies() {
        let p = pod(json!({}));
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "abc", "kind": {"kind": "Pod"}, "namespace": "shop", "object": p}
        });
        let resp = review_response(&review, &InjectSettings::default(), &ns(Some("enabled")));
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(resp["response"]["uid"], "abc");
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        // Not annotated: allowed, no patch.
        let resp = review_response(&review, &InjectSettings::default(), &ns(None));
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());
    }

    #[test]
    fn http1_idle_timeout_pod_then_namespace_then_chart_and_bad_values_are_ignored() {
        let idle_of = |pod_ann: Value, ns_ann: &[(&str, &str)], chart: Option<&str>| {
            let settings = InjectSettings {
                http1_idle_timeout: chart.map(str::to_string),
                ..Default::default()
            };
            let ns: BTreeMap<String, String> = ns_ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let out = inject_pod_of(&pod(pod_ann), &settings, None, &ns).unwrap();
            let proxy = out["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == PROXY_CONTAINER)
                .cloned()
                .unwrap();
            let values: Vec<String> = proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == HTTP1_IDLE_TIMEOUT_ENV)
                .map(|e| e["value"].as_str().unwrap().to_string())
                .collect();
            assert!(values.len() <= 1, "{values:?}");
            values.into_iter().next()
        };
        let ns = [(HTTP1_IDLE_TIMEOUT_ANNOTATION, "10m")];
        // Nothing anywhere: unset, the proxy's own default (an hour).
        assert_eq!(idle_of(json!({}), &[], None), None);
        assert_eq!(idle_of(json!({}), &[], Some("2h")).as_deref(), Some("2h"));
        assert_eq!(idle_of(json!({}), &ns, Some("2h")).as_deref(), Some("10m"));
        let pod_ann = json!({"weft.io/http1-idle-timeout": " 90s "});
        assert_eq!(idle_of(pod_ann, &ns, Some("2h")).as_deref(), Some("90s"));
        // What the proxy would refuse is skipped: the next level decides, the pod still starts.
        for bad in ["500ms", "0", "soon", "1d", ""] {
            let pod_ann = json!({"weft.io/http1-idle-timeout": bad});
            assert_eq!(
                idle_of(pod_ann.clone(), &ns, None).as_deref(),
                Some("10m"),
                "{bad:?}"
            );
            assert_eq!(idle_of(pod_ann, &[], None), None, "{bad:?}");
        }
        // The chart's value is checked when the operator starts.
        let chart = |v: &str| {
            InjectSettings::from_lookup(|k| (k == HTTP1_IDLE_TIMEOUT_ENV).then(|| v.to_string()))
        };
        assert_eq!(
            chart("30m").unwrap().http1_idle_timeout.as_deref(),
            Some("30m")
        );
        assert_eq!(chart("").unwrap().http1_idle_timeout, None);
        assert!(matches!(
            chart("100ms"),
            Err(InjectError::Env {
                name: HTTP1_IDLE_TIMEOUT_ENV,
                ..
            })
        ));
    }

    #[test]
    fn trace_collector_pod_then_namespace_then_chart_and_bad_values_are_ignored() {
        let env_of = |out: &Value| -> Option<String> {
            out.pointer("/spec/containers")?
                .as_array()?
                .iter()
                .find(|c| c["name"] == PROXY_CONTAINER)?["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == TRACE_COLLECTOR_ENV)
                .and_then(|e| e["value"].as_str())
                .map(str::to_string)
        };
        let review_env = |pod_ann: Value, ns_ann: &[(&str, &str)], settings: &InjectSettings| {
            let review = json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "t", "kind": {"kind": "Pod"}, "namespace": "shop",
                            "object": pod(pod_ann)}
            });
            let mut ns: BTreeMap<String, String> = ns_ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ns.insert(INJECT_ANNOTATION.into(), "enabled".into());
            let before = pod(json!({}));
            let rsp = review_response(&review, settings, &ns);
            let patch = rsp["response"]["patch"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!patch.is_empty());
            // Replay the patch: what the pod becomes.
            use base64::Engine;
            let ops: Value = serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .unwrap(),
            )
            .unwrap();
            let mut applied = before;
            for op in ops.as_array().unwrap() {
                let (parent, key) = op["path"].as_str().unwrap().rsplit_once('/').unwrap();
                applied.pointer_mut(parent).unwrap()[key] = op["value"].clone();
            }
            env_of(&applied)
        };
        let chart = InjectSettings {
            trace_collector: Some("http://otel.tracing:4317".into()),
            ..Default::default()
        };
        let none = InjectSettings::default();
        let ns_ann = [(TRACE_COLLECTOR_ANNOTATION, "http://ns-collector:4317")];
        // Nothing anywhere: no variable, tracing off.
        assert_eq!(review_env(json!({}), &[], &none), None);
        assert_eq!(
            review_env(json!({}), &[], &chart).as_deref(),
            Some("http://otel.tracing:4317")
        );
        assert_eq!(
            review_env(json!({}), &ns_ann, &chart).as_deref(),
            Some("http://ns-collector:4317")
        );
        assert_eq!(
            review_env(
                json!({"weft.io/trace-collector": "http://pod-collector:4317"}),
                &ns_ann,
                &chart
            )
            .as_deref(),
            Some("http://pod-collector:4317")
        );
        // TLS to the collector is not supported: ignored rather than a proxy that fails.
        assert_eq!(
            review_env(
                json!({"weft.io/trace-collector": "https://pod-collector:4317"}),
                &[],
                &none
            ),
            None
        );
        // Empty turns the default off; a value that is not a URL is ignored, the pod still
        // gets its proxy.
        assert_eq!(
            review_env(json!({"weft.io/trace-collector": ""}), &ns_ann, &chart),
            None
        );
        assert_eq!(
            review_env(json!({"weft.io/trace-collector": "otel:4317"}), &[], &chart),
            None
        );
        assert_eq!(
            review_env(json!({"weft.io/trace-collector": "http://a b"}), &[], &none),
            None
        );
        // The chart value reaches the settings from the operator's environment.
        let from_env = InjectSettings::from_lookup(|k| {
            (k == TRACE_COLLECTOR_ENV).then(|| "http://otel.tracing:4317".to_string())
        })
        .unwrap();
        assert_eq!(from_env, chart);
        let empty = InjectSettings::from_lookup(|k| (k == TRACE_COLLECTOR_ENV).then(String::new));
        assert_eq!(empty.unwrap().trace_collector, None);
        assert!(InjectSettings::from_lookup(|k| {
            (k == TRACE_COLLECTOR_ENV).then(|| "otel:4317".to_string())
        })
        .is_err());
    }

    #[test]
    fn discovery_mode_and_pre_subscribed_services_reach_the_proxy() {
        let env_of = |out: &Value, name: &str| -> Option<String> {
            out.pointer("/spec/containers")?
                .as_array()?
                .iter()
                .find(|c| c["name"] == PROXY_CONTAINER)?["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
                .map(str::to_string)
        };
        let push_all = InjectSettings::default();
        let on_demand_op = InjectSettings {
            on_demand: true,
            ..Default::default()
        };
        let ns_od: BTreeMap<String, String> = [(
            DISCOVERY_MODE_ANNOTATION.to_string(),
            "on-demand".to_string(),
        )]
        .into();
        let ns_pa: BTreeMap<String, String> = [(
            DISCOVERY_MODE_ANNOTATION.to_string(),
            "push-all".to_string(),
        )]
        .into();
        let mode = |ann: Value, ns: &BTreeMap<String, String>, s: &InjectSettings| {
            let out = inject_pod_of(&pod(ann), s, None, ns).unwrap();
            env_of(&out, DISCOVERY_MODE_ENV)
        };
        let none = BTreeMap::new();
        // The operator's mode is the default.
        assert_eq!(mode(json!({}), &none, &push_all), None);
        assert_eq!(
            mode(json!({}), &none, &on_demand_op).as_deref(),
            Some("on-demand")
        );
        // Namespace, then pod annotation override it.
        assert_eq!(
            mode(json!({}), &ns_od, &push_all).as_deref(),
            Some("on-demand")
        );
        assert_eq!(mode(json!({}), &ns_pa, &on_demand_op), None);
        assert_eq!(
            mode(
                json!({"weft.io/discovery-mode": "on-demand"}),
                &ns_pa,
                &push_all
            )
            .as_deref(),
            Some("on-demand")
        );
        assert_eq!(
            mode(
                json!({"weft.io/discovery-mode": "push-all"}),
                &ns_od,
                &on_demand_op
            ),
            None
        );
        // An unknown value is ignored (the next level decides), never an injection failure.
        assert_eq!(
            mode(json!({"weft.io/discovery-mode": "lazy"}), &ns_od, &push_all).as_deref(),
            Some("on-demand")
        );
        assert_eq!(
            mode(json!({"weft.io/discovery-mode": "lazy"}), &none, &push_all),
            None
        );

        // Pre-subscription: valid entries copied (trimmed, deduplicated), bad ones warned about.
        let ann = json!({"weft.io/outbound-services":
            " api.shop, Bad.Shop,db.data,,api.shop, nodots, a.b.c, x.y, -a.b, not a.svc "});
        let out = inject_pod_of(&pod(ann.clone()), &on_demand_op, None, &none).unwrap();
        assert_eq!(
            env_of(&out, OUTBOUND_SERVICES_ENV).as_deref(),
            Some("api.shop,db.data,x.y")
        );
        let (_, warnings) = outbound_services(&pod(ann.clone()));
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("Bad.Shop")));
        // Only garbage: no variable, the pod is still injected, the review carries warnings.
        let garbage = json!({"weft.io/outbound-services": "not a service, ../etc"});
        let out = inject_pod_of(&pod(garbage.clone()), &on_demand_op, None, &none).unwrap();
        assert_eq!(env_of(&out, OUTBOUND_SERVICES_ENV), None);
        assert!(env_of(&out, "WEFT_PROXY_POD").is_some());
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "t", "kind": {"kind": "Pod"}, "namespace": "shop",
                        "object": pod(garbage)}
        });
        let ns_inject: BTreeMap<String, String> =
            [(INJECT_ANNOTATION.to_string(), "enabled".to_string())].into();
        let rsp = review_response(&review, &on_demand_op, &ns_inject);
        assert_eq!(rsp["response"]["allowed"], true);
        assert!(rsp["response"]["patch"].is_string());
        assert_eq!(
            rsp["response"]["warnings"].as_array().map(Vec::len),
            Some(2)
        );
        // Bounded: at most MAX_OUTBOUND_SERVICES copied, the rest warned about.
        let many: Vec<String> = (0..MAX_OUTBOUND_SERVICES + 5)
            .map(|i| format!("s{i}.ns"))
            .collect();
        let (kept, warnings) =
            outbound_services(&pod(json!({"weft.io/outbound-services": many.join(",")})));
        assert_eq!(kept.unwrap().split(',').count(), MAX_OUTBOUND_SERVICES);
        assert_eq!(warnings.len(), 5);
        // Re-injection with the same settings changes nothing.
        let once = inject_pod_of(&pod(ann), &on_demand_op, None, &none).unwrap();
        let twice = inject_pod_of(&once, &on_demand_op, None, &none).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn patch_ops_reproduce_the_injected_pod() {
        let before = pod(json!({}));
        let after = inject_pod(&before, &InjectSettings::default()).unwrap();
        let mut applied = before.clone();
        for op in json_patch(&before, &after).as_array().unwrap() {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let (parent, key) = path.rsplit_once('/').unwrap();
            applied.pointer_mut(parent).unwrap()[key] = op["value"].clone();
        }
        assert_eq!(applied, after);
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn manifest_workloads_are_injected_and_others_pass_through() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: web}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy}
spec:
  template:
    metadata: {annotations: {weft.io/inject: disabled}}
    spec: {containers: [{name: app, image: legacy}]}
"#;
        let s = InjectSettings::default();
        let out = inject_manifest(yaml, &s).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| {
                use serde::Deserialize;
                Value::deserialize(d).unwrap()
            })
            .collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "Service");
        assert_eq!(
            docs[1]["spec"]["template"]["spec"]["containers"][1]["name"],
            PROXY_CONTAINER
        );
        assert_eq!(
            docs[1]["spec"]["template"]["metadata"]["labels"]["app"],
            "web"
        );
        assert_eq!(
            docs[2]["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Idempotent on its own output.
        assert_eq!(inject_manifest(&out, &s).unwrap(), out);
        assert!(matches!(
            inject_manifest("a: [", &s),
            Err(InjectError::Yaml { doc: 1, .. })
        ));
    }

    #[test]
    fn settings_from_env() {
        let vars = BTreeMap::from([
            ("WEFT_PROXY_IMAGE", "reg/proxy:9"),
            ("WEFT_PROXY_UID", "1234"),
            ("WEFT_PROXY_CPU_LIMIT", "1"),
            ("WEFT_PROXY_MEMORY_LIMIT", ""),
        ]);
        let s = InjectSettings::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.proxy_image, "reg/proxy:9");
        assert_eq!(s.proxy_uid, 1234);
        assert_eq!(s.cpu_limit.as_deref(), Some("1"));
        assert_eq!(s.memory_limit, None);
        let bad = InjectSettings::from_lookup(|k| (k == "WEFT_PROXY_UID").then(|| "x".to_string()));
        assert!(matches!(bad, Err(InjectError::Env { .. })));
    }

    #[test]
    fn the_proxy_is_told_its_workload_from_the_owner_or_the_manifest() {
        let s = InjectSettings::default();
        let workload_env = |pod: &Value| -> Option<String> {
            pod["spec"]["containers"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == PROXY_CONTAINER)?["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == WORKLOAD_ENV)
                .and_then(|e| e["value"].as_str().map(str::to_string))
        };
        // Admission: a ReplicaSet's pod is its Deployment's.
        let pod = json!({
            "metadata": {
                "labels": {"pod-template-hash": "5d8f7c9b4"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f7c9b4", "controller": true}],
            },
            "spec": {"containers": [{"name": "web"}]},
        });
        let out = inject_pod(&pod, &s).unwrap();
        assert_eq!(workload_env(&out).as_deref(), Some("deployment/web"));
        let sts = json!({
            "metadata": {"ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": true}]},
            "spec": {"containers": [{"name": "db"}]},
        });
        assert_eq!(owner_workload(&sts).as_deref(), Some("statefulset/db"));
        // No owner: no variable.
        let bare = json!({"metadata": {}, "spec": {"containers": [{"name": "x"}]}});
        assert_eq!(workload_env(&inject_pod(&bare, &s).unwrap()), None);
        // `weft inject -f`: the workload is the manifest's object.
        let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    metadata: {}\n    spec:\n      containers: [{name: api}]\n";
        let out = inject_manifest(yaml, &s).unwrap();
        assert!(out.contains("WEFT_PROXY_WORKLOAD"), "{out}");
        assert!(out.contains("deployment/api"), "{out}");
    }
}
