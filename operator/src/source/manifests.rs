//! `--manifests DIR`: a directory of Kubernetes YAML, watched for changes.
//!
//! Changes are noticed with `notify` (debounced) and, as a fallback for filesystems that do not
//! report events, by a periodic rescan. Each rescan reads every manifest file whose content
//! changed; a file that fails to parse keeps its last good objects in force and its error is
//! reported (logs, metrics, `GET /status`, a warning on `GET /ready`). The rescan's result is
//! one atomic batch of [`Change`]s.
//!
//! A rescan costs O(changed files), not O(mesh): a file whose `stat` (size, mtime, ctime,
//! inode) is what it was when it was last read, and whose mtime was already 2 s old then, is
//! not read again (the 2 s cover filesystems with coarse timestamps, where a write right after
//! a read could keep the mtime); and only the objects of files whose objects changed are
//! compared with those in force.
//!
//! What removes a file's objects, and what does not (a file rewritten in place is briefly empty
//! or half-written, and must not shift traffic meanwhile):
//!
//! * the file is deleted (or renamed to a name that is not a manifest): removed at once;
//! * the file's new content is valid and lacks some objects: those are removed at once;
//! * the file's content is invalid, unreadable, too large, too deep, or the file became a FIFO,
//!   socket or device: nothing is removed, the last good objects stay in force until the file is
//!   valid again (or deleted), and the file is reported;
//! * the file is empty (no document: zero bytes, whitespace, comments): its last good objects
//!   stay in force, and it is reported, until it has content again, is deleted, or has stayed
//!   empty for [`WatchOptions::empty_grace`]; then the emptying is honoured.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use prometheus_client::metrics::gauge::Gauge;

use super::{Change, Source, SourceError, SourceEvent, SourceTx};
use crate::admin::Health;
use crate::model::manifests::{
    list_manifests, parse_file, read_manifest, ManifestError, ALIAS_REASON,
};
use crate::model::{ClusterObject, ObjectKey};
use crate::shutdown::Shutdown;

/// Tunables of the directory watcher.
///
/// The first event after a quiet period is handled on its leading edge: the rescan starts as
/// soon as no further event came for `settle` (the steps of one save, such as writing a
/// temporary file and renaming it over the old one, arrive microseconds apart and land in one
/// rescan). Events within `debounce` of the previous rescan belong to a burst: they are
/// coalesced on the trailing edge, rescanning once no event came for `debounce`, and at the
/// latest after `max_delay`.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Quiet time after the first event of a quiet period before rescanning.
    pub settle: Duration,
    /// Quiet time after the last event of a burst before rescanning; also how long after a
    /// rescan further events count as the same burst.
    pub debounce: Duration,
    /// Longest a rescan is delayed by a continuous stream of events.
    pub max_delay: Duration,
    /// Rescan at least this often, events or not.
    pub rescan_interval: Duration,
    /// How long a file that had objects must stay empty before its objects are removed (an
    /// empty file is more often a rewrite in progress than an intent; delete the file to
    /// remove its objects at once).
    pub empty_grace: Duration,
    /// A rescan that has not finished after this long makes the source stuck: `GET /ready`
    /// answers 503 until it finishes.
    pub stuck_after: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            settle: Duration::from_millis(2),
            debounce: Duration::from_millis(15),
            max_delay: Duration::from_millis(500),
            rescan_interval: Duration::from_secs(5),
            empty_grace: Duration::from_secs(10),
            stuck_after: Duration::from_secs(30),
        }
    }
}

/// What `stat` says of a file: equal stamps (taken long enough after the last write, see
/// [`RACY`]) mean equal content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file modified less than this before it was read is read again on the next rescan, even
/// with an unchanged stamp (a filesystem with coarse timestamps could hide a second write).
const RACY: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct FileState {
    digest: [u8; 32],
    /// The stamp of the content `digest` is of, when it may be trusted to skip reading.
    stamp: Option<Stamp>,
    /// The objects of the last version of the file that loaded (shared with the previous
    /// state while they stay the same: a rescan compares only objects of files whose objects
    /// changed).
    objects: Arc<Vec<ClusterObject>>,
    /// Why the current content does not load, if it does not.
    error: Option<String>,
    /// Since when the file has been empty while its last good objects are kept.
    empty_since: Option<Instant>,
}

impl FileState {
    /// The file's current content cannot be used: keep what the previous state had in force.
    /// The digest is cleared, so that the next readable content is parsed (and the error
    /// cleared) even if it is the same as before.
    fn failed(previous: Option<FileState>, error: String) -> FileState {
        FileState {
            digest: [0; 32],
            stamp: None,
            objects: previous.map(|p| p.objects).unwrap_or_default(),
            error: Some(error),
            empty_since: None,
        }
    }
}

/// An object in force and every file that has an object with its key.
#[derive(Debug)]
struct InForce {
    object: ClusterObject,
    /// Never empty.
    files: Vec<Arc<Path>>,
}

/// The state of a manifests directory: the last good objects of each file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Objects currently in force, by key (the last file in path order wins on duplicates).
    current: HashMap<ObjectKey, InForce>,
    /// Error listing the directory itself.
    dir_error: Option<String>,
    /// Entries the last walk did not read (FIFOs, aliases, too deep), with why.
    skipped: BTreeMap<PathBuf, String>,
    empty_grace: Duration,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            current: HashMap::new(),
            dir_error: None,
            skipped: BTreeMap::new(),
            empty_grace: WatchOptions::default().empty_grace,
        }
    }

    /// Sets how long an emptied file keeps its objects (see [`WatchOptions::empty_grace`]).
    pub fn with_empty_grace(mut self, grace: Duration) -> Self {
        self.empty_grace = grace;
        self
    }

    /// When the next emptied file's grace ends (a rescan then removes its objects), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.files
            .values()
            .filter_map(|s| s.empty_since)
            .min()
            .map(|since| since + self.empty_grace)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rereads the directory (blocking I/O) and returns the changes since the last rescan.
    pub fn rescan(&mut self) -> Vec<Change> {
        self.rescan_at(Instant::now())
    }

    /// [`rescan`](Self::rescan) at a given time (for the empty-file grace).
    pub fn rescan_at(&mut self, now: Instant) -> Vec<Change> {
        let listing = match list_manifests(&self.dir) {
            Ok(l) => {
                self.dir_error = None;
                l
            }
            Err(e) => {
                // Keep everything in force: a directory that cannot be listed right now (being
                // replaced, permissions, over a limit) is not an instruction to delete the
                // mesh's config.
                let message = describe(&e);
                tracing::warn!(dir = %self.dir.display(), error = %message, "cannot list manifests; keeping every object in force");
                self.dir_error = Some(message);
                return Vec::new();
            }
        };
        // The objects of each file before this rescan (shared, not copied).
        let before: BTreeMap<PathBuf, Arc<Vec<ClusterObject>>> = self
            .files
            .iter()
            .map(|(p, s)| (p.clone(), s.objects.clone()))
            .collect();
        let mut seen = BTreeMap::new();
        self.skipped.clear();
        for (path, reason) in listing.skipped {
            // A manifest that became a FIFO or device keeps its last good objects, as an
            // unreadable one does; a second path to a file already read adds nothing.
            if !reason.starts_with(ALIAS_REASON) {
                if let Some(previous) = self.files.remove(&path) {
                    seen.insert(
                        path.clone(),
                        FileState::failed(Some(previous), reason.clone()),
                    );
                    continue;
                }
            }
            self.skipped.insert(path, reason);
        }
        for path in listing.files {
            let previous = self.files.remove(&path);
            let read_at = SystemTime::now();
            let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
            let unchanged = previous
                .as_ref()
                .is_some_and(|p| p.error.is_none() && p.stamp.is_some() && p.stamp == stamp);
            let previous = match previous {
                Some(mut state) if unchanged => {
                    self.expire_empty(&path, &mut state, now);
                    seen.insert(path, state);
                    continue;
                }
                other => other,
            };
            let bytes = match read_manifest(&path) {
                Ok(b) => b,
                // Deleted between listing and reading: gone.
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    let message = describe(&e);
                    tracing::warn!(file = %path.display(), error = %message, "cannot read manifest; keeping its last good objects");
                    seen.insert(path, FileState::failed(previous, message));
                    continue;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let mut state = match previous {
                Some(mut state) if state.digest == digest => {
                    self.expire_empty(&path, &mut state, now);
                    state
                }
                previous => self.load(&path, &bytes, digest, previous, now),
            };
            // Trusted next time only if it was not modified just before this read, and was
            // not modified while it was read.
            let settled = stamp.filter(|s| {
                let mtime = SystemTime::UNIX_EPOCH
                    + Duration::new(
                        s.mtime.0.max(0) as u64,
                        s.mtime.1.clamp(0, 999_999_999) as u32,
                    );
                mtime + RACY <= read_at
            });
            let after = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
            state.stamp = settled.filter(|s| state.error.is_none() && Some(*s) == after);
            seen.insert(path, state);
        }
        self.files = seen;
        self.diff(before)
    }

    /// Parses changed content into the file's new state.
    fn load(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: [u8; 32],
        previous: Option<FileState>,
        now: Instant,
    ) -> FileState {
        match parse_file(path, bytes) {
            Ok((objects, ignored)) => {
                let empty = objects.is_empty() && ignored.is_empty();
                match previous {
                    Some(previous) if empty && !previous.objects.is_empty() => {
                        let since = previous.empty_since.unwrap_or(now);
                        tracing::warn!(
                            file = %path.display(),
                            objects = previous.objects.len(),
                            grace_s = self.empty_grace.as_secs_f64(),
                            "manifest is empty; keeping its last good objects for now"
                        );
                        let mut state = FileState {
                            digest,
                            stamp: None,
                            objects: previous.objects,
                            error: None,
                            empty_since: Some(since),
                        };
                        self.expire_empty(path, &mut state, now);
                        state
                    }
                    _ => {
                        tracing::debug!(file = %path.display(), objects = objects.len(), "manifest loaded");
                        FileState {
                            digest,
                            stamp: None,
                            objects: Arc::new(objects),
                            error: None,
                            empty_since: None,
                        }
                    }
                }
            }
            Err(e) => {
                let message = describe(&e);
                tracing::warn!(
                    file = %path.display(),
                    error = %message,
                    "manifest does not load; keeping its last good objects"
                );
                let mut state = FileState::failed(previous, message);
                state.digest = digest;
                state
            }
        }
    }

    /// Honours an emptied file once it has stayed empty for the grace period.
    fn expire_empty(&self, path: &Path, state: &mut FileState, now: Instant) {
        let Some(since) = state.empty_since else {
            return;
        };
        if now.saturating_duration_since(since) >= self.empty_grace {
            tracing::info!(
                file = %path.display(),
                objects = state.objects.len(),
                "manifest stayed empty; removing its objects"
            );
            state.objects = Arc::default();
            state.empty_since = None;
        }
    }

    /// Updates the objects in force from the files whose objects are not those of `before`
    /// (the objects of each file before the rescan) and returns what changed: O(objects of
    /// those files), however many files are unchanged.
    fn diff(&mut self, before: BTreeMap<PathBuf, Arc<Vec<ClusterObject>>>) -> Vec<Change> {
        let same = |a: Option<&Arc<Vec<ClusterObject>>>, b: Option<&Arc<Vec<ClusterObject>>>| matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        let mut affected: HashSet<ObjectKey> = HashSet::new();
        // Keys not in force before this rescan.
        let mut added: HashSet<ObjectKey> = HashSet::new();
        // The new objects of each changed file, by key (the last one in the file wins).
        let mut fresh: HashMap<Arc<Path>, HashMap<ObjectKey, &ClusterObject>> = HashMap::new();
        for (path, old) in &before {
            if same(Some(old), self.files.get(path).map(|s| &s.objects)) {
                continue;
            }
            for o in old.iter() {
                let key = o.key();
                if let Some(f) = self.current.get_mut(&key) {
                    f.files.retain(|p| **p != **path);
                }
                affected.insert(key);
            }
        }
        for (path, state) in &self.files {
            if same(before.get(path), Some(&state.objects)) {
                continue;
            }
            let shared: Arc<Path> = Arc::from(path.as_path());
            let mut objects = HashMap::new();
            for o in state.objects.iter() {
                objects.insert(o.key(), o);
            }
            for (key, o) in &objects {
                match self.current.get_mut(key) {
                    Some(f) => f.files.push(shared.clone()),
                    None => {
                        added.insert(key.clone());
                        self.current.insert(
                            key.clone(),
                            InForce {
                                object: (*o).clone(),
                                files: vec![shared.clone()],
                            },
                        );
                    }
                }
                affected.insert(key.clone());
            }
            fresh.insert(shared, objects);
        }
        let mut changes = Vec::new();
        for key in affected {
            let Some(f) = self.current.get_mut(&key) else {
                continue;
            };
            // The last file in path order wins.
            let Some(winner) = f.files.iter().max().cloned() else {
                self.current.remove(&key);
                changes.push(Change::Remove(key));
                continue;
            };
            let object = match fresh.get(&winner) {
                Some(objects) => objects.get(&key).copied(),
                // An unchanged file that has the key too (a duplicate across files).
                None => self
                    .files
                    .get(&*winner)
                    .and_then(|s| s.objects.iter().rev().find(|o| o.key() == key)),
            };
            match object {
                Some(o) if added.contains(&key) || *o != f.object => {
                    f.object = o.clone();
                    changes.push(Change::Upsert(o.clone()));
                }
                Some(_) => {}
                // Not reachable (every file in `files` has the key); fail towards keeping.
                None => {}
            }
        }
        changes
    }

    /// Entries (relative to the directory) whose current content is not in force, or that
    /// were not read, with the reason; `.` for the directory itself.
    pub fn errors(&self) -> BTreeMap<String, String> {
        let rel = |path: &Path| {
            path.strip_prefix(&self.dir)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let mut out = BTreeMap::new();
        for (path, s) in &self.files {
            let kept = s.objects.len();
            let message = match (&s.error, s.empty_since) {
                (Some(e), _) if kept > 0 => {
                    format!("{e} (its last good {kept} objects stay in force until it loads or is deleted)")
                }
                (Some(e), _) => e.clone(),
                (None, Some(_)) => format!(
                    "empty (its last good {kept} objects stay in force until it has content again, is deleted, or has stayed empty for {} s)",
                    self.empty_grace.as_secs()
                ),
                (None, None) => continue,
            };
            out.insert(rel(path), message);
        }
        for (path, reason) in &self.skipped {
            out.insert(rel(path), format!("skipped: {reason}"));
        }
        if let Some(e) = &self.dir_error {
            out.insert(
                ".".to_string(),
                format!("{e} (every object stays in force until the directory can be read)"),
            );
        }
        out
    }

    /// Number of manifest files read by the last rescan.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Number of objects in force.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

fn describe(e: &ManifestError) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Why the directory watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {path}: {source}")]
    Notify { path: String, source: notify::Error },
}

/// A filesystem watcher that sends a tick (coalesced) for every event under the directory.
/// Dropping it stops the watch.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    options: WatchOptions,
    /// When the last batch was handed out.
    last_batch: Option<tokio::time::Instant>,
}

impl DirWatcher {
    pub fn new(dir: &Path, options: WatchOptions) -> Result<Self, WatchError> {
        use notify::Watcher;
        let (tx, rx) = mpsc::channel(1);
        let handler = move |res: notify::Result<notify::Event>| {
            match res {
                Ok(ev) if ev.kind.is_access() => {}
                // A full channel already holds a tick: coalesced.
                _ => {
                    let _ = tx.try_send(());
                }
            }
        };
        // Symlinked directories are not watched (the rescan still reads them, once each, and
        // the periodic rescan notices their changes): following them could make the watcher
        // walk and watch whatever they point to, the whole filesystem for a link to `/`.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = notify::RecommendedWatcher::new(handler, config).map_err(|source| {
            WatchError::Notify {
                path: dir.display().to_string(),
                source,
            }
        })?;
        watcher
            .watch(dir, notify::RecursiveMode::Recursive)
            .map_err(|source| WatchError::Notify {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(DirWatcher {
            _watcher: watcher,
            rx,
            options,
            last_batch: None,
        })
    }

    /// Waits for the next batch of filesystem events, returning when the first of them arrived,
    /// or for the rescan interval (`None`). See [`WatchOptions`] for how events are batched.
    pub async fn next(&mut self) -> Option<std::time::Instant> {
        let first = tokio::time::timeout(self.options.rescan_interval, self.rx.recv()).await;
        match first {
            Ok(Some(())) => {}
            Ok(None) => {
                // The watcher is gone; fall back to periodic rescans only.
                tokio::time::sleep(self.options.rescan_interval).await;
                return None;
            }
            Err(_) => return None,
        }
        let at = std::time::Instant::now();
        let start = tokio::time::Instant::now();
        let in_burst = self
            .last_batch
            .is_some_and(|t| start.duration_since(t) < self.options.debounce);
        let quiet_for = if in_burst {
            self.options.debounce
        } else {
            self.options.settle
        };
        let deadline = start + self.options.max_delay;
        loop {
            let quiet = tokio::time::Instant::now() + quiet_for;
            match tokio::time::timeout_at(quiet.min(deadline), self.rx.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                _ => break,
            }
        }
        self.last_batch = Some(tokio::time::Instant::now());
        Some(at)
    }
}

/// A watched manifests directory as a [`Source`]: rescans it on filesystem events (see
/// [`DirWatcher`]), periodically, and when an emptied file's grace ends, and sends each
/// rescan's changes as one batch. Its first scan is the listing the first snapshot waits for
/// ([`MANIFESTS`]).
pub struct ManifestsSource {
    pub dir: PathBuf,
    pub options: WatchOptions,
    /// Where the rescans' progress and the files' errors are reported (`/ready`, `/status`).
    pub health: Arc<Health>,
    /// Manifest entries not in force.
    pub errors: Gauge,
}

/// The name of the manifests source's initial listing (see [`SourceEvent::Expect`]).
pub const MANIFESTS: &str = "manifests";

impl Source for ManifestsSource {
    async fn run(self, tx: SourceTx, mut shutdown: Shutdown) -> Result<(), SourceError> {
        let ManifestsSource {
            dir,
            options,
            health,
            errors,
        } = self;
        if tx
            .send(SourceEvent::Expect([MANIFESTS.to_string()].into()))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut watcher = match DirWatcher::new(&dir, options.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no filesystem events; rescanning periodically");
                None
            }
        };
        let mut state = ManifestDir::new(dir.clone()).with_empty_grace(options.empty_grace);
        health.track_rescans(options.stuck_after);
        let mut observed_at = Instant::now();
        let mut first = true;
        loop {
            health.rescan_started();
            let (back, changes) = tokio::task::spawn_blocking(move || {
                let changes = state.rescan();
                (state, changes)
            })
            .await
            .map_err(|e| SourceError::Manifests(dir.clone(), format!("rescan task: {e}")))?;
            health.rescan_finished();
            state = back;
            let failing = state.errors();
            errors.set(failing.len() as i64);
            health.set_source_errors(failing);
            let mut sent = changes.is_empty()
                || tx
                    .send(SourceEvent::Changes {
                        changes,
                        observed_at,
                    })
                    .await
                    .is_ok();
            if first && sent {
                first = false;
                sent = tx
                    .send(SourceEvent::Synced(MANIFESTS.to_string()))
                    .await
                    .is_ok();
            }
            if !sent {
                return Ok(());
            }
            // An emptied file's grace ending is a reason to rescan too.
            let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
            let next = async {
                let event = async {
                    match watcher.as_mut() {
                        Some(w) => w.next().await,
                        None => {
                            tokio::time::sleep(options.rescan_interval).await;
                            None
                        }
                    }
                };
                match deadline {
                    Some(at) => tokio::select! {
                        e = event => e,
                        _ = tokio::time::sleep_until(at) => None,
                    },
                    None => event.await,
                }
            };
            tokio::select! {
                _ = shutdown.triggered() => return Ok(()),
                first_event = next => observed_at = first_event.unwrap_or_else(Instant::now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";
    const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: canary, namespace: demo}\nspec:\n  service: web\n  backends: [{service: web, weight: 100}]\n";

    fn kinds(changes: &[Change]) -> Vec<String> {
        let mut v: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Upsert(o) => format!("+{}", o.key().name),
                Change::Remove(k) => format!("-{}", k.name),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn add_edit_delete_and_malformed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert!(dir.rescan().is_empty());

        std::fs::write(tmp.path().join("svc.yaml"), SVC).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/split.yaml"), SPLIT).unwrap();
        assert_eq!(kinds(&dir.rescan()), vec!["+canary", "+web"]);
        assert_eq!(dir.len(), 2);
        // Nothing changed: nothing to do.
        assert!(dir.rescan().is_empty());

        // A broken edit keeps the last good objects and reports the file.
        std::fs::write(tmp.path().join("sub/split.yaml"), "kind: [unclosed").unwrap();
        assert!(dir.rescan().is_empty());
        assert_eq!(dir.len(), 2);
        let errors = dir.errors();
        assert!(errors.contains_key("sub/split.yaml"), "{errors:?}");

        // Fixed: the new content applies and the error clears.
        std::fs::write(
            tmp.path().join("sub/split.yaml"),
            SPLIT.replace("weight: 100", "weight: 50"),
        )
        .unwrap();
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        assert!(dir.errors().is_empty());

        // Rename: same objects, nothing changes.
        std::fs::rename(tmp.path().join("svc.yaml"), tmp.path().join("svc2.yml")).unwrap();
        assert!(dir.rescan().is_empty());

        // Delete: objects go.
        std::fs::remove_file(tmp.path().join("sub/split.yaml")).unwrap();
        assert_eq!(kinds(&dir.rescan()), vec!["-canary"]);
        assert_eq!(dir.len(), 1);
    }

    #[tokio::test]
    async fn a_burst_of_saves_is_coalesced_into_few_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("split.yaml");
        std::fs::write(&path, SPLIT).unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        let options = WatchOptions {
            rescan_interval: Duration::from_millis(300),
            ..WatchOptions::default()
        };
        let mut watcher = DirWatcher::new(tmp.path(), options).unwrap();

        // One save (temporary file renamed over the old one) is noticed.
        let save = |weight: u32| {
            let tmp_path = tmp.path().join(".split.yaml.tmp");
            std::fs::write(
                &tmp_path,
                SPLIT.replace("weight: 100", &format!("weight: {weight}")),
            )
            .unwrap();
            std::fs::rename(&tmp_path, &path).unwrap();
        };
        save(1);
        assert!(watcher.next().await.is_some());
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        while watcher.next().await.is_some() {}

        // A burst of 100 saves gives far fewer batches, and the last state wins.
        for w in 2..=101 {
            save(w);
        }
        let mut batches = 0;
        while watcher.next().await.is_some() {
            batches += 1;
        }
        assert!((1..50).contains(&batches), "{batches} batches");
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        assert!(dir.rescan().is_empty());
    }

    #[test]
    fn hidden_and_foreign_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".svc.yaml.swp"), "garbage: [").unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "garbage: [").unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert!(dir.rescan().is_empty());
        assert!(dir.errors().is_empty());
    }

    #[test]
    fn an_emptied_file_keeps_its_objects_until_the_grace_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("split.yaml");
        std::fs::write(&path, SPLIT).unwrap();
        let mut dir = ManifestDir::new(tmp.path()).with_empty_grace(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(kinds(&dir.rescan_at(t0)), vec!["+canary"]);

        // Empty (whitespace and a comment count as empty): kept, reported, deadline set.
        std::fs::write(&path, "# rewritten\n\n").unwrap();
        assert!(dir.rescan_at(t0).is_empty());
        assert_eq!(dir.len(), 1);
        assert!(
            dir.errors()["split.yaml"].starts_with("empty"),
            "{:?}",
            dir.errors()
        );
        assert_eq!(dir.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(dir.rescan_at(t0 + Duration::from_secs(9)).is_empty());

        // Content again before the grace ends: applies, nothing was removed.
        std::fs::write(&path, SPLIT.replace("weight: 100", "weight: 7")).unwrap();
        assert_eq!(
            kinds(&dir.rescan_at(t0 + Duration::from_secs(9))),
            vec!["+canary"]
        );
        assert!(dir.errors().is_empty());
        assert_eq!(dir.next_deadline(), None);

        // Empty for the whole grace: honoured.
        std::fs::write(&path, "").unwrap();
        let t1 = t0 + Duration::from_secs(20);
        assert!(dir.rescan_at(t1).is_empty());
        assert_eq!(
            kinds(&dir.rescan_at(t1 + Duration::from_secs(10))),
            vec!["-canary"]
        );
        assert!(dir.errors().is_empty());
        assert!(dir.is_empty());

        // A file that never had objects may be empty: nothing to report.
        std::fs::write(tmp.path().join("new.yaml"), "").unwrap();
        assert!(dir.rescan_at(t1).is_empty());
        assert!(dir.errors().is_empty());
    }

    #[test]
    fn a_manifest_replaced_by_a_socket_keeps_its_objects_and_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("split.yaml");
        std::fs::write(&path, SPLIT).unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        std::fs::remove_file(&path).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(dir.rescan().is_empty(), "kept");
        let errors = dir.errors();
        assert!(
            errors["split.yaml"].contains("not a regular file (socket)"),
            "{errors:?}"
        );
        assert!(errors["split.yaml"].contains("stay in force"), "{errors:?}");

        // The same content back: in force as before, and the report clears.
        drop(_socket);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, SPLIT).unwrap();
        assert!(dir.rescan().is_empty());
        assert!(dir.errors().is_empty(), "{:?}", dir.errors());
        assert_eq!(dir.len(), 1);
    }

    #[test]
    fn the_last_file_in_path_order_wins_a_duplicate_and_the_other_takes_over_when_it_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        std::fs::write(tmp.path().join("a.yaml"), SPLIT).unwrap();
        std::fs::write(
            tmp.path().join("b.yaml"),
            SPLIT.replace("weight: 100", "weight: 50"),
        )
        .unwrap();
        let first = dir.rescan();
        assert_eq!(kinds(&first), vec!["+canary"]);
        assert!(format!("{first:?}").contains("50"), "{first:?}");
        // Editing the file that does not win changes nothing.
        std::fs::write(
            tmp.path().join("a.yaml"),
            SPLIT.replace("weight: 100", "weight: 70"),
        )
        .unwrap();
        assert!(dir.rescan().is_empty());
        // The winner goes: the other file's object is in force.
        std::fs::remove_file(tmp.path().join("b.yaml")).unwrap();
        let next = dir.rescan();
        assert_eq!(kinds(&next), vec!["+canary"]);
        assert!(format!("{next:?}").contains("70"), "{next:?}");
        // The last file goes: the object goes.
        std::fs::remove_file(tmp.path().join("a.yaml")).unwrap();
        assert_eq!(kinds(&dir.rescan()), vec!["-canary"]);
        assert!(dir.is_empty());
    }

    #[test]
    fn a_rewrite_that_keeps_size_and_mtime_is_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("split.yaml");
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        };
        write(SPLIT);
        let mut dir = ManifestDir::new(tmp.path());
        assert_eq!(kinds(&dir.rescan()), vec!["+canary"]);
        // Unchanged: not read again, nothing to do.
        assert!(dir.rescan().is_empty());
        // Same length, same mtime, other content: the inode's change time tells.
        write(&SPLIT.replace("weight: 100", "weight: 900"));
        let changes = dir.rescan();
        assert_eq!(kinds(&changes), vec!["+canary"]);
        assert!(format!("{changes:?}").contains("900"), "{changes:?}");
    }

    #[test]
    fn directories_deeper_than_the_limit_are_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for _ in 0..crate::model::manifests::MAX_DIR_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(deep.join("d")).unwrap();
        std::fs::write(deep.join("svc.yaml"), SVC).unwrap();
        std::fs::write(deep.join("d/split.yaml"), SPLIT).unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert_eq!(kinds(&dir.rescan()), vec!["+web"]);
        let errors = dir.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors.values().all(|e| e.contains("levels deep")),
            "{errors:?}"
        );
    }
}
