//! Reaching a cluster: `--kubeconfig`/`--context` on every command that talks to one, and errors
//! that name the server tried and what to do next (never a Rust `Debug` dump).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long any single API call may take before the command gives up on it.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags that choose a cluster, shared by every command that talks to one.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// A client and where it points, for messages.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    /// The API server URL.
    pub server: String,
}

impl ClusterArgs {
    /// What a message should call the configuration in use.
    pub fn source(&self) -> String {
        let file = match &self.kubeconfig {
            Some(p) => format!("kubeconfig {}", p.display()),
            None => match std::env::var_os("KUBECONFIG") {
                Some(k) if !k.is_empty() => {
                    format!("kubeconfig $KUBECONFIG={}", k.to_string_lossy())
                }
                _ => "the default kubeconfig (~/.kube/config, or in-cluster)".to_string(),
            },
        };
        match &self.context {
            Some(c) => format!("{file}, context {c}"),
            None => file,
        }
    }

    /// Loads the configuration and builds a client (no request is made yet).
    pub async fn connect(&self) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    anyhow!(
                        "cannot read the kubeconfig {}: {}. Pass an existing file with --kubeconfig",
                        path.display(),
                        causes(&e)
                    )
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| self.config_error(&causes(&e)))?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| self.config_error(&causes(&e)))?,
            (None, None) => kube::Config::infer()
                .await
                .map_err(|e| self.config_error(&causes(&e)))?,
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| anyhow!("cannot build a client for {server}: {}", kube_error(&e)))?;
        Ok(Cluster { client, server })
    }

    fn config_error(&self, cause: &str) -> anyhow::Error {
        anyhow!(
            "no usable cluster configuration ({}): {cause}. Pass --kubeconfig PATH and/or --context NAME, or set KUBECONFIG",
            self.source()
        )
    }
}

impl Cluster {
    /// `GET /version` within [`API_TIMEOUT`]: `(major, minor, gitVersion)`.
    pub async fn version(&self) -> anyhow::Result<(u32, u32, String)> {
        let v = tokio::time::timeout(API_TIMEOUT, self.client.apiserver_version())
            .await
            .map_err(|_| {
                anyhow!(
                    "the Kubernetes API server at {} did not answer within {}s",
                    self.server,
                    API_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| self.unreachable(&e))?;
        let major = v.major.trim_end_matches('+').parse().unwrap_or(0);
        let minor = v.minor.trim_end_matches('+').parse().unwrap_or(0);
        Ok((major, minor, v.git_version))
    }

    /// An error for a failed call, naming the server.
    pub fn unreachable(&self, e: &kube::Error) -> anyhow::Error {
        anyhow!(
            "could not reach the Kubernetes API server at {} ({}). Check --kubeconfig/--context",
            self.server,
            kube_error(e)
        )
    }

    /// `GET path` (an API path) as text, within [`API_TIMEOUT`].
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let req = http::Request::get(path).body(Vec::new())?;
        tokio::time::timeout(API_TIMEOUT, self.client.request_text(req))
            .await
            .map_err(|_| anyhow!("no answer within {}s", API_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("{}", kube_error(&e)))
    }
}

/// A kube error in words: the API server's message and reason, or the transport's root cause.
pub fn kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let mut out = if s.message.is_empty() {
                "the API server refused the request".to_string()
            } else {
                s.message.clone()
            };
            match (s.reason.as_str(), s.code) {
                ("", 0) => {}
                ("", c) => out.push_str(&format!(" (HTTP {c})")),
                (r, 0) => out.push_str(&format!(" ({r})")),
                (r, c) => out.push_str(&format!(" ({r}, HTTP {c})")),
            }
            out
        }
        other => {
            // A connection failure: its root io error in words ("connection refused").
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(other);
            while let Some(err) = cur {
                if let Some(io) = err.downcast_ref::<std::io::Error>() {
                    return io_cause(io);
                }
                cur = err.source();
            }
            causes(other)
        }
    }
}

/// The chain of causes of an error, outermost first, joined by `: `, with repeats (a cause whose
/// text its parent already includes) dropped and well-known kube prefixes removed.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let part = tidy(&err.to_string());
        if !part.is_empty() && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        cur = err.source();
    }
    text
}

/// Drops the type-name prefixes kube and hyper put on their messages.
fn tidy(s: &str) -> String {
    let mut s = s.trim();
    for prefix in [
        "HyperError: ",
        "ServiceError: ",
        "client error (Connect): ",
        "Failed to infer configuration: ",
        "Failed to infer provided configuration: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    match s {
        "client error (Connect)" | "error trying to connect" => String::new(),
        other => other.to_string(),
    }
}

/// `connection refused`, `timed out`, ...: the io error kind at the root of a connection failure,
/// in words.
pub fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        TimedOut => "timed out".into(),
        ConnectionReset => "connection reset".into(),
        HostUnreachable | NetworkUnreachable => "no route to host".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_joined_once_without_type_prefixes() {
        let e = E(
            "HyperError: client error (Connect)",
            Some(Box::new(E(
                "tcp connect error: Connection refused (os error 111)",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            causes(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
        let e = E("reading a.yaml", Some(Box::new(E("no such file", None))));
        assert_eq!(causes(&e), "reading a.yaml: no such file");
    }

    #[test]
    fn api_errors_are_message_and_reason_not_debug() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": "pods is forbidden: User \"x\" cannot list",
            "reason": "Forbidden", "code": 403
        }))
        .expect("status");
        let text = kube_error(&kube::Error::Api(Box::new(status)));
        assert_eq!(
            text,
            "pods is forbidden: User \"x\" cannot list (Forbidden, HTTP 403)"
        );
        assert!(!text.contains("Status {"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file_and_the_flags() {
        let args = ClusterArgs {
            kubeconfig: Some("/nonexistent/kc".into()),
            context: None,
        };
        let err = args.connect().await.err().expect("fails").to_string();
        assert!(err.contains("/nonexistent/kc"), "{err}");
        assert!(err.contains("--kubeconfig"), "{err}");
        assert!(!err.contains("Os {"), "no Debug dump: {err}");
    }
}
