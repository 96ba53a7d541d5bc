//! Feedback where users look, on a real kube-apiserver (1.20) with the real kubectl 1.20
//! (Debian's `kubernetes-client`, built from the same source package as the API server):
//!
//! - `kubectl apply` of an invalid TrafficSplit is refused and kubectl prints every problem
//!   with its field, whether the CRD schema or weft's validating webhook refuses it;
//! - a problem the status reports becomes a Warning Event whose `involvedObject.uid` is the
//!   object's uid, so `kubectl describe` lists it;
//! - restarting the operator with the same problem does not add a second Event (its count
//!   rises); a changed problem is a new Event.
//!
//! Needs `cargo build -p weft-operator --bins` first, and kubectl 1.20 at `$WEFT_KUBECTL` or in
//! the kube cache folder (`<cache>/kubectl`, which `e2e/scripts/kube-build.sh` unpacks from
//! Debian's kubernetes-client; [`weft_e2e::cluster::kubectl_120`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use kube::api::{PatchParams, PostParams};
use serde_json::{json, Value};
use weft_e2e::cluster::{kubectl_120, skip, Cluster};
use weft_e2e::operator::{wait_for, OperatorOptions, OperatorProcess, WebhookPlane, MANAGER};

const NS: &str = "e2e";
const LIMIT: Duration = Duration::from_secs(30);

/// Serialises this file's tests (each starts its own control plane).
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    client: kube::Client,
    kubectl: PathBuf,
    dir: tempfile::TempDir,
    bin: PathBuf,
    certs: PathBuf,
    webhook_port: u16,
    // Dropped after the operators (declared later in tests), then the lock.
    cluster: Cluster,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

/// A control plane with the SMI CRDs and weft's validating webhook, namespaces `e2e` and
/// `weft-system`, Services `web` and `web-v1`; or `None` after a loud skip.
async fn env(test: &str) -> Option<Env> {
    let guard = LOCK.lock().await;
    let kubectl = match kubectl_120() {
        Ok(k) => k,
        Err(e) => {
            skip(test, &e);
            return None;
        }
    };
    let WebhookPlane {
        cluster,
        client,
        dir,
        bin,
        certs,
        webhook_port,
        ..
    } = WebhookPlane::start(test, "weft-feedback-", true, true).await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "weft-system"] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    for name in ["web", "web-v1"] {
        let svc = json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]}
        });
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
            .unwrap();
    }
    Some(Env {
        client,
        kubectl,
        dir,
        bin,
        certs,
        webhook_port,
        cluster,
        _guard: guard,
    })
}

impl Drop for Env {
    /// On failure, print the operators' logs (their folder is removed with the Env).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for e in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                eprintln!("==== {}:\n{tail}\n", e.path().display());
            }
        }
    }
}

impl Env {
    /// Starts an operator serving the webhooks (no leader election: it writes status and
    /// Events) and waits until it is ready.
    async fn operator(&self, log_name: &str) -> OperatorProcess {
        let options = OperatorOptions {
            webhook: Some((self.certs.clone(), self.webhook_port)),
            leader: None,
            args: vec![],
        };
        let mut op = OperatorProcess::start(
            &self.bin,
            &self.cluster.kubeconfig,
            self.dir.path(),
            log_name,
            &options,
        )
        .unwrap();
        op.wait_ready(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{log_name}: {e}"));
        op
    }

    /// Runs kubectl 1.20 against the cluster: (success, stdout + stderr).
    async fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new(&self.kubectl)
            .arg(format!(
                "--kubeconfig={}",
                self.cluster.kubeconfig.display()
            ))
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running kubectl: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `kubectl apply -f <file>` of `yaml`, with `extra` arguments.
    async fn kubectl_apply(&self, name: &str, yaml: &str, extra: &[&str]) -> (bool, String) {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let mut args = vec!["apply", "-f", path_str(&file)];
        args.extend_from_slice(extra);
        self.kubectl(&args).await
    }

    fn splits(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("split.smi-spec.io", "v1alpha4", "TrafficSplit");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "trafficsplits");
        Api::namespaced_with(self.client.clone(), NS, &ar)
    }

    async fn apply_split(&self, name: &str, backends: Value) {
        let obj = json!({
            "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"service": "web", "backends": backends}
        });
        self.splits()
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("applying TrafficSplit {name}: {e}"));
    }

    /// The Events of `e2e` about the object named `name`.
    async fn events_about(&self, name: &str) -> Result<Vec<Event>, String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .map_err(|e| e.to_string())?;
        Ok(list.items)
    }

    /// Waits until the Events about `name` satisfy `done`; returns them.
    async fn wait_events(
        &self,
        what: &str,
        name: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let done = &done;
        wait_for(what, LIMIT, || async move {
            let events = self.events_about(name).await?;
            if done(&events) {
                Ok(Some(events))
            } else {
                Err(format!("events: {}", summary(&events)))
            }
        })
        .await
        .unwrap()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn summary(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} x{} {:?}",
                e.metadata.name.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                e.count.unwrap_or(0),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn with_reason<'a>(events: &'a [Event], reason: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The `Events:` section of `kubectl describe` output (to the end).
fn events_section(describe: &str) -> &str {
    describe
        .find("\nEvents:")
        .map(|i| &describe[i..])
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_feedback_kubectl_apply_names_every_invalid_field() {
    let Some(env) = env("kube_feedback_admission").await else {
        return;
    };
    let _op = env.operator("weft-operator").await;

    // Refused by weft's validating webhook (the CRD schema allows both): the weights sum to 0,
    // and the second backend repeats the first. (An empty `service` would not reach the
    // webhook: the 1.20 API server's schema check reports `""` of a required string as
    // `must be of type string: "null"`.)
    let (ok, out) = env
        .kubectl_apply(
            "zero",
            &format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
                 metadata: {{name: zero, namespace: {NS}}}\n\
                 spec:\n  service: web\n  backends:\n\
                 \x20 - {{service: web-v1, weight: 0}}\n\
                 \x20 - {{service: web-v1, weight: 0}}\n"
            ),
            &[],
        )
        .await;
    eprintln!("kubectl apply (webhook):\n{out}");
    assert!(!ok, "an invalid split is refused:\n{out}");
    assert!(
        out.contains("The TrafficSplit \"zero\" is invalid"),
        "kubectl names the object, not only `The request is invalid`:\n{out}"
    );
    assert!(
        out.contains("spec.backends: ZeroWeights: the weights sum to 0"),
        "the first cause, with its field:\n{out}"
    );
    assert!(
        out.contains(
            "spec.backends[1].service: DuplicateBackend: backend \"web-v1\" is listed twice"
        ),
        "the second cause, with its field:\n{out}"
    );
    assert!(
        !out.contains("The request is invalid"),
        "no bare message:\n{out}"
    );

    // Refused by the CRD schema before the webhook: a negative weight and a backend without
    // its service. kubectl 1.20 checks required fields itself first (against the schema the
    // API server publishes); past that check (`--validate=false`) the API server's schema
    // validation names both fields.
    let negative = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
         metadata: {{name: negative, namespace: {NS}}}\n\
         spec:\n  service: web\n  backends:\n\
         \x20 - {{service: web-v1, weight: -1}}\n\
         \x20 - {{weight: 1}}\n"
    );
    let (ok, out) = env.kubectl_apply("negative", &negative, &[]).await;
    eprintln!("kubectl apply (kubectl's own check):\n{out}");
    assert!(!ok, "an invalid split is refused:\n{out}");
    // kubectl validates on its own only once the API server publishes the CRD's schema in
    // /openapi/v2 (asynchronously, seconds after the CRD is established); before that the API
    // server's schema validation answers. Either way the missing field is named.
    assert!(
        (out.contains("spec.backends[1]") && out.contains("missing required field \"service\""))
            || out.contains("spec.backends.service: Required value"),
        "{out}"
    );
    let (ok, out) = env
        .kubectl_apply("negative", &negative, &["--validate=false"])
        .await;
    eprintln!("kubectl apply --validate=false (the API server's schema):\n{out}");
    assert!(!ok, "an invalid split is refused:\n{out}");
    assert!(
        out.contains("spec.backends.weight") && out.contains("greater than or equal to 0"),
        "the negative weight's field:\n{out}"
    );
    assert!(
        out.contains("spec.backends.service: Required value"),
        "the missing service's field:\n{out}"
    );

    // Accepted but suspicious (the root is the only backend with traffic): applied, and
    // kubectl prints the admission warning with its field and reason.
    let (ok, out) = env
        .kubectl_apply(
            "root-only",
            &format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
                 metadata: {{name: root-only, namespace: {NS}}}\n\
                 spec:\n  service: web\n  backends:\n\
                 \x20 - {{service: web, weight: 100}}\n\
                 \x20 - {{service: web-v1, weight: 0}}\n"
            ),
            &[],
        )
        .await;
    eprintln!("kubectl apply (warning):\n{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("Warning: spec.backends: RootOnlyBackend: the root service \"web\""),
        "{out}"
    );

    // Nothing was stored; a valid split still applies.
    assert!(env.splits().get_opt("zero").await.unwrap().is_none());
    let (ok, out) = env
        .kubectl_apply(
            "fine",
            &format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
                 metadata: {{name: fine, namespace: {NS}}}\n\
                 spec:\n  service: web\n  backends:\n\
                 \x20 - {{service: web-v1, weight: 1}}\n"
            ),
            &[],
        )
        .await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_feedback_events_by_uid_once_across_restarts() {
    let Some(env) = env("kube_feedback_events").await else {
        return;
    };
    let mut op = env.operator("weft-operator").await;

    // A backend Service that does not exist: ResolvedRefs=False, and a Warning Event.
    env.apply_split(
        "broken",
        json!([{"service": "web-v1", "weight": 1}, {"service": "web-missing", "weight": 1}]),
    )
    .await;
    let uid = env
        .splits()
        .get("broken")
        .await
        .unwrap()
        .metadata
        .uid
        .expect("a stored object has a uid");
    let events = env
        .wait_events("the BackendNotFound Event", "broken", |evs| {
            !with_reason(evs, "BackendNotFound").is_empty()
        })
        .await;
    let found = with_reason(&events, "BackendNotFound");
    assert_eq!(found.len(), 1, "{}", summary(&events));
    let ev = found[0].clone();
    assert_eq!(ev.involved_object.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(ev.involved_object.kind.as_deref(), Some("TrafficSplit"));
    assert_eq!(ev.involved_object.namespace.as_deref(), Some(NS));
    assert!(ev.involved_object.resource_version.is_some(), "{ev:?}");
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.count, Some(1));
    assert!(
        ev.message.as_deref().unwrap_or("").contains("web-missing"),
        "{ev:?}"
    );
    let event_name = ev.metadata.name.clone().unwrap();

    // kubectl 1.20 describe (which selects Events by the object's uid) lists it.
    let (ok, out) = env
        .kubectl(&[
            "describe",
            "-n",
            NS,
            "trafficsplits.split.smi-spec.io",
            "broken",
        ])
        .await;
    eprintln!("kubectl describe:\n{out}");
    assert!(ok, "{out}");
    let section = events_section(&out);
    assert!(
        !section.is_empty() && !section.contains("<none>"),
        "describe shows Events:\n{out}"
    );
    assert!(
        section.contains("Warning") && section.contains("BackendNotFound"),
        "describe shows the Event:\n{out}"
    );
    assert!(section.contains("web-missing"), "{out}");

    // Restart the operator with the object unchanged: the same Event, counted again, and no
    // second Event.
    op.kill().await;
    drop(op);
    let op = env.operator("weft-operator-restarted").await;
    let events = env
        .wait_events(
            "the Event counted by the restarted operator",
            "broken",
            |evs| {
                with_reason(evs, "BackendNotFound")
                    .iter()
                    .any(|e| e.count.unwrap_or(0) >= 2)
            },
        )
        .await;
    let found = with_reason(&events, "BackendNotFound");
    assert_eq!(
        found.len(),
        1,
        "still exactly one Event after a restart: {}",
        summary(&events)
    );
    assert_eq!(found[0].metadata.name.as_deref(), Some(event_name.as_str()));
    assert_eq!(found[0].count, Some(2), "{}", summary(&events));
    assert!(
        op.log_text().contains("event published"),
        "the restarted operator did publish"
    );

    // A changed problem (another missing backend) is a new Event; the old one stays.
    env.apply_split(
        "broken",
        json!([{"service": "web-v1", "weight": 1}, {"service": "web-gone", "weight": 1}]),
    )
    .await;
    let events = env
        .wait_events("an Event for the new problem", "broken", |evs| {
            with_reason(evs, "BackendNotFound")
                .iter()
                .any(|e| e.message.as_deref().unwrap_or("").contains("web-gone"))
        })
        .await;
    let found = with_reason(&events, "BackendNotFound");
    assert_eq!(found.len(), 2, "{}", summary(&events));
    assert!(found
        .iter()
        .all(|e| e.involved_object.uid.as_deref() == Some(uid.as_str())));
    let (_, out) = env
        .kubectl(&[
            "describe",
            "-n",
            NS,
            "trafficsplits.split.smi-spec.io",
            "broken",
        ])
        .await;
    assert!(events_section(&out).contains("web-gone"), "{out}");
}
