//! CRD lifecycle: which SMI kinds are served can change while the operator runs (CRDs
//! installed after it, by a GitOps tool, or deleted). [`SmiSupervisor`] re-discovers them when an
//! SMI CRD changes (a metadata-only watch of CustomResourceDefinitions), when a watcher gets 404,
//! and on a timer, and starts, moves or stops their watchers accordingly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::{mpsc, oneshot};
use weft_common::Backoff;

use super::discovery::{discover_smi, is_smi_crd, smi_watch_name, NOT_SERVED, SMI_KINDS};
use super::metrics::{ResourceLabels, SourceMetrics};
use super::watch::{is_forbidden, reflect_with, Known, Note, WatchCtl};
use crate::source::{Change, SourceEvent, SourceTx};

/// Watches CustomResourceDefinitions (metadata only) and notes changes of the SMI groups' ones.
/// Needs `list`/`watch` on `customresourcedefinitions`; without them the supervisor still
/// re-discovers by polling.
pub(super) async fn watch_crds(client: Client, notes: mpsc::Sender<Note>, metrics: SourceMetrics) {
    let labels = ResourceLabels {
        resource: "customresourcedefinitions".to_string(),
    };
    let api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let hint = match item {
            Err(e) => {
                metrics.watch_errors.get_or_create(&labels).inc();
                if failing {
                    tracing::debug!(error = %e, "CustomResourceDefinition watch error; retrying with backoff");
                } else if is_forbidden(&e) {
                    tracing::warn!(error = %e, "not allowed to watch CustomResourceDefinitions (grant list/watch on customresourcedefinitions); SMI CRDs are looked for by polling meanwhile");
                } else {
                    tracing::warn!(error = %e, "CustomResourceDefinition watch error; retrying with backoff, SMI CRDs are looked for by polling meanwhile");
                }
                failing = true;
                false
            }
            Ok(Event::InitDone) => {
                failing = false;
                true
            }
            Ok(Event::Apply(m)) | Ok(Event::Delete(m)) => {
                failing = false;
                m.metadata.name.as_deref().is_some_and(is_smi_crd)
            }
            Ok(Event::Init) | Ok(Event::InitApply(_)) => false,
        };
        // A full queue already holds a note that makes the supervisor look.
        if hint && notes.try_send(Note::Crds).is_err() && notes.is_closed() {
            return;
        }
    }
}

/// When the [`SmiSupervisor`] asks discovery again which SMI kinds are served.
#[derive(Debug)]
struct Rediscovery {
    next: Instant,
    /// The wait after the next run that leaves a kind missing (doubles up to [`Self::MAX`]).
    delay: Duration,
    /// Runs in a row that left a kind missing (the [`Self::BACKOFF`] attempt).
    attempt: u32,
    last_run: Option<Instant>,
}

impl Rediscovery {
    /// First wait while something is missing.
    const FIRST: Duration = Duration::from_secs(1);
    /// Longest wait while something is missing (the poll that finds CRDs without a CRD watch).
    const MAX: Duration = Duration::from_secs(30);
    /// Wait when every kind is served (a safety net for missed CRD changes).
    const SETTLED: Duration = Duration::from_secs(300);
    /// Hints (a CRD event) are acted on this much later, so a burst becomes one look.
    const DEBOUNCE: Duration = Duration::from_millis(200);
    /// Least time between two runs, whatever the hints.
    const MIN_GAP: Duration = Duration::from_secs(1);
    /// The polls while a kind is missing: [`Self::FIRST`] doubling to [`Self::MAX`]. Its bound,
    /// not a jittered delay: one supervisor per operator polls, there is no herd to spread, and
    /// the schedule stays predictable.
    const BACKOFF: Backoff = Backoff::new(Self::FIRST, Self::MAX);

    fn new(now: Instant, all_served: bool) -> Self {
        let mut r = Rediscovery {
            next: now,
            delay: Self::FIRST,
            attempt: 0,
            last_run: None,
        };
        r.settle(now, all_served);
        r
    }

    fn settle(&mut self, now: Instant, all_served: bool) {
        if all_served {
            self.next = now + Self::SETTLED;
            self.reset();
        } else {
            self.next = now + self.delay;
            self.attempt = self.attempt.saturating_add(1);
            self.delay = Self::BACKOFF.bound(self.attempt);
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
        self.delay = Self::BACKOFF.bound(0);
    }

    /// Something suggests that what is served changed: look soon, and retry quickly after.
    fn hint(&mut self, now: Instant) {
        let mut at = now + Self::DEBOUNCE;
        if let Some(last) = self.last_run {
            at = at.max(last + Self::MIN_GAP);
        }
        self.next = self.next.min(at);
        self.reset();
    }

    /// Discovery ran at `now`: `answered` whether it got an answer, `all_served` whether every
    /// kind is served.
    fn ran(&mut self, now: Instant, answered: bool, all_served: bool) {
        self.last_run = Some(now);
        self.settle(now, answered && all_served);
    }
}

/// What to do with one SMI kind's watcher, given what discovery says.
#[derive(Debug, PartialEq)]
enum Step {
    Keep,
    Start(ApiResource),
    /// Served at another version (or resource name): watch that instead.
    Restart(ApiResource),
    /// Not served anymore: stop watching, its objects are gone.
    Stop,
}

fn step(current: Option<&ApiResource>, served: Option<&ApiResource>) -> Step {
    match (current, served) {
        (None, None) => Step::Keep,
        (None, Some(ar)) => Step::Start(ar.clone()),
        (Some(_), None) => Step::Stop,
        (Some(cur), Some(ar)) if cur.api_version == ar.api_version && cur.plural == ar.plural => {
            Step::Keep
        }
        (Some(_), Some(ar)) => Step::Restart(ar.clone()),
    }
}

/// How long discovery must keep saying that a watched kind is not served before its watcher is
/// stopped and its objects removed: a restarting API server can serve requests before it has
/// loaded its CRDs, and a brief absence must not strip every split from the proxies.
const GONE_CONFIRM: Duration = Duration::from_secs(5);

/// Whether a watched kind that discovery says is not served (now, and since `since` if that is
/// set) is gone for good; starts the clock on the first such answer.
fn confirm_gone(since: &mut Option<Instant>, now: Instant) -> bool {
    match since {
        Some(t) => now.duration_since(*t) >= GONE_CONFIRM,
        None => {
            *since = Some(now);
            false
        }
    }
}

/// A running watcher of one SMI kind (aborted when dropped).
struct Running {
    ar: ApiResource,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Known>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Running {
    /// Stops the watcher; returns what it had reported (and not removed).
    async fn stop(mut self) -> Known {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.unwrap_or_default()
    }
}

/// Keeps one watcher per served SMI kind: starts a kind's watcher once discovery says it is
/// served, moves it to another version when the preferred one changes, and stops it (removing
/// its objects from the model) once discovery says the kind is gone.
///
/// Discovery runs on hints (an SMI CRD changed, a watcher got 404) and on a timer: with
/// backoff from 1 s to 30 s while a kind is missing, every 5 minutes otherwise. A watched kind
/// is dropped only once discovery has said it is not served for [`GONE_CONFIRM`].
pub(super) struct SmiSupervisor {
    client: Client,
    tx: SourceTx,
    metrics: SourceMetrics,
    notes_tx: mpsc::Sender<Note>,
    notes_rx: mpsc::Receiver<Note>,
    /// One per [`SMI_KINDS`] entry.
    running: Vec<Option<Running>>,
    initial: Vec<ApiResource>,
    /// What was last reported as unwatched.
    reported: Option<BTreeMap<String, String>>,
    /// Why the last discovery got no answer, if it did not.
    failed: Option<String>,
    /// Per kind: since when discovery says a watched kind is not served (see [`confirm_gone`]).
    gone_since: Vec<Option<Instant>>,
}

impl SmiSupervisor {
    pub(super) fn new(
        client: Client,
        initial: Vec<ApiResource>,
        tx: SourceTx,
        metrics: SourceMetrics,
        notes_tx: mpsc::Sender<Note>,
        notes_rx: mpsc::Receiver<Note>,
    ) -> Self {
        SmiSupervisor {
            client,
            tx,
            metrics,
            notes_tx,
            notes_rx,
            running: SMI_KINDS.iter().map(|_| None).collect(),
            initial,
            reported: None,
            failed: None,
            gone_since: SMI_KINDS.iter().map(|_| None).collect(),
        }
    }

    fn all_served(&self) -> bool {
        self.running.iter().all(Option::is_some)
    }

    pub(super) async fn run(mut self) {
        for ar in std::mem::take(&mut self.initial) {
            if let Some(i) = SMI_KINDS.iter().position(|k| k.is(&ar)) {
                self.running[i] = Some(self.spawn(ar, Known::new()));
            }
        }
        if !self.report().await {
            return;
        }
        let mut schedule = Rediscovery::new(Instant::now(), self.all_served());
        loop {
            let sleep = tokio::time::sleep_until(schedule.next.into());
            tokio::select! {
                _ = sleep => {}
                note = self.notes_rx.recv() => {
                    if let Some(note) = note {
                        tracing::debug!(?note, "looking again for SMI kinds");
                        schedule.hint(Instant::now());
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
            }
            let answer = discover_smi(&self.client).await;
            let answered = answer.is_ok();
            match answer {
                Ok(served) => {
                    self.failed = None;
                    for (i, s) in served.iter().enumerate() {
                        if !self.apply(i, s.as_ref()).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SMI discovery failed; keeping the current watches");
                    self.failed = Some(e.to_string());
                }
            }
            if !self.report().await {
                return;
            }
            let now = Instant::now();
            schedule.ran(now, answered, self.all_served());
            // Look again when a disappearance can be confirmed.
            if let Some(first) = self.gone_since.iter().flatten().min() {
                schedule.next = schedule
                    .next
                    .min((*first + GONE_CONFIRM).max(now + Rediscovery::MIN_GAP));
            }
        }
    }

    fn spawn(&self, ar: ApiResource, known: Known) -> Running {
        let (stop, stop_rx) = oneshot::channel();
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let name = smi_watch_name(&ar);
        let ctl = WatchCtl {
            known,
            stop: Some(stop_rx),
            notes: Some(self.notes_tx.clone()),
        };
        let handle = tokio::spawn(reflect_with::<DynamicObject>(
            api,
            name,
            self.tx.clone(),
            self.metrics.clone(),
            ctl,
        ));
        Running {
            ar,
            stop: Some(stop),
            handle,
        }
    }

    /// Brings kind `i` in line with discovery; false once the runtime is gone.
    async fn apply(&mut self, i: usize, served: Option<&ApiResource>) -> bool {
        let crd = SMI_KINDS[i].crd_name();
        let step = step(self.running[i].as_ref().map(|r| &r.ar), served);
        if step != Step::Stop {
            self.gone_since[i] = None;
        } else {
            let first = self.gone_since[i].is_none();
            if !confirm_gone(&mut self.gone_since[i], Instant::now()) {
                if first {
                    tracing::info!(crd = %crd, "SMI kind no longer in discovery; confirming before its objects are removed");
                }
                return true;
            }
        }
        match step {
            Step::Keep => true,
            Step::Start(ar) => {
                tracing::info!(crd = %crd, version = %ar.version, "SMI kind served; watching it");
                self.running[i] = Some(self.spawn(ar, Known::new()));
                true
            }
            Step::Restart(ar) => {
                let known = match self.running[i].take() {
                    Some(r) => r.stop().await,
                    None => Known::new(),
                };
                tracing::info!(crd = %crd, version = %ar.version, "SMI kind now preferred at another version; watching that");
                // The new watcher's first listing removes what the old one reported and it
                // does not list.
                self.running[i] = Some(self.spawn(ar, known));
                true
            }
            Step::Stop => {
                self.gone_since[i] = None;
                let Some(r) = self.running[i].take() else {
                    return true;
                };
                let name = smi_watch_name(&r.ar);
                let known = r.stop().await;
                tracing::warn!(crd = %crd, objects = known.len(), "SMI kind not served anymore (CRD deleted?); its objects are removed");
                let changes: Vec<Change> = known.into_values().map(Change::Remove).collect();
                if !changes.is_empty()
                    && self
                        .tx
                        .send(SourceEvent::Changes {
                            changes,
                            observed_at: Instant::now(),
                        })
                        .await
                        .is_err()
                {
                    return false;
                }
                // Nothing left to wait for, should the first snapshot still wait for it.
                self.tx.send(SourceEvent::Synced(name)).await.is_ok()
            }
        }
    }

    /// Reports the unwatched kinds when they changed; false once the runtime is gone.
    async fn report(&mut self) -> bool {
        let unwatched: BTreeMap<String, String> = SMI_KINDS
            .iter()
            .zip(&self.running)
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| {
                let why = match &self.failed {
                    Some(e) => format!("cannot tell whether it is served: discovery failed: {e}"),
                    None => NOT_SERVED.to_string(),
                };
                (k.crd_name(), why)
            })
            .collect();
        if self.reported.as_ref() == Some(&unwatched) {
            return true;
        }
        self.metrics.unwatched_smi_kinds.set(unwatched.len() as i64);
        self.reported = Some(unwatched.clone());
        self.tx
            .send(SourceEvent::Unwatched(unwatched))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn steps_follow_discovery() {
        let v3 = ar(
            "split.smi-spec.io",
            "v1alpha3",
            "TrafficSplit",
            "trafficsplits",
        );
        let v4 = ar(
            "split.smi-spec.io",
            "v1alpha4",
            "TrafficSplit",
            "trafficsplits",
        );
        assert_eq!(step(None, None), Step::Keep);
        assert_eq!(step(None, Some(&v4)), Step::Start(v4.clone()));
        assert_eq!(step(Some(&v4), Some(&v4)), Step::Keep);
        assert_eq!(step(Some(&v3), Some(&v4)), Step::Restart(v4.clone()));
        assert_eq!(step(Some(&v4), None), Step::Stop);
    }

    #[test]
    fn a_kind_is_gone_once_discovery_says_so_for_a_while() {
        let t0 = Instant::now();
        let mut since = None;
        assert!(
            !confirm_gone(&mut since, t0),
            "the first answer starts the clock"
        );
        assert_eq!(since, Some(t0));
        assert!(!confirm_gone(&mut since, t0 + Duration::from_secs(1)));
        assert!(confirm_gone(&mut since, t0 + GONE_CONFIRM));
    }

    #[test]
    fn rediscovery_backs_off_while_missing_and_settles_when_all_served() {
        let t0 = Instant::now();
        let mut r = Rediscovery::new(t0, false);
        assert_eq!(r.next, t0 + Duration::from_secs(1));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            now = r.next;
            r.ran(now, true, false);
            waits.push((r.next - now).as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30, 30]);
        // An unanswered discovery also backs off.
        r.ran(now, false, true);
        assert_eq!(r.next - now, Rediscovery::MAX);
        // Everything served: the slow safety net.
        r.ran(now, true, true);
        assert_eq!(r.next - now, Rediscovery::SETTLED);
        assert_eq!(r.delay, Rediscovery::FIRST);
        assert_eq!(Rediscovery::new(t0, true).next, t0 + Rediscovery::SETTLED);
    }

    #[test]
    fn hints_look_soon_but_never_more_than_once_a_second() {
        let t0 = Instant::now();
        let mut r = Rediscovery::new(t0, true);
        r.hint(t0);
        assert_eq!(r.next, t0 + Rediscovery::DEBOUNCE);
        // A burst of hints does not push the look later.
        r.hint(t0 + Duration::from_millis(150));
        assert_eq!(r.next, t0 + Rediscovery::DEBOUNCE);
        // Right after a run, the next look waits for the minimum gap.
        let ran = t0 + Duration::from_secs(1);
        r.ran(ran, true, true);
        r.hint(ran);
        assert_eq!(r.next, ran + Rediscovery::MIN_GAP);
        // And a hint resets the backoff: still missing after it, look again in 1 s.
        let mut r = Rediscovery::new(t0, false);
        for i in 1..6 {
            r.ran(t0 + Duration::from_secs(i * 10), true, false);
        }
        let now = t0 + Duration::from_secs(100);
        r.hint(now);
        r.ran(now, true, false);
        assert_eq!(r.next - now, Rediscovery::FIRST);
    }
}
