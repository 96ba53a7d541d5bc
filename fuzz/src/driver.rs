//! The stable driver: runs a target on its seed corpus, then on mutations of it, for a bounded
//! time or number of runs; catches panics, writes each crashing input to an artifacts folder.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::mutate::{Mutator, Rng};
use crate::{Features, Target};

thread_local! {
    /// Set while a target runs on this thread: its panic is recorded here, not printed.
    static CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string panic payload)".to_string());
                        let loc = info
                            .location()
                            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                            .unwrap_or_default();
                        *slot = Some(format!("panicked at {loc}: {msg}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `target` once on `data`. `Err` holds the panic (location and message).
pub fn run_one(target: &Target, data: &[u8]) -> Result<Features, String> {
    install_panic_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(None));
    let mut features = Features::default();
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data, &mut features)));
    let captured = CAPTURE.with(|c| c.borrow_mut().take()).flatten();
    match result {
        Ok(()) => Ok(features),
        Err(_) => Err(captured.unwrap_or_else(|| "panicked".to_string())),
    }
}

/// Settings of one fuzzing run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop after this long (`None`: no time limit).
    pub duration: Option<Duration>,
    /// Stop after this many executions, seeds included (`None`: no limit).
    pub runs: Option<u64>,
    pub seed: u64,
    /// Longest generated input; `None`: the target's own limit.
    pub max_len: Option<usize>,
    /// Seed corpus folders (missing folders are skipped).
    pub corpus: Vec<PathBuf>,
    /// Where crashing inputs are written (`<dir>/crash-<hash>`); `None`: not written.
    pub artifacts: Option<PathBuf>,
    /// Keep fuzzing after a crash (distinct crashes are reported once each).
    pub keep_going: bool,
    /// Write inputs that reached new outcomes here (to grow a corpus).
    pub save_new: Option<PathBuf>,
    /// Write each input to `<artifacts>/current` before running it, so that an abort (stack
    /// overflow, out of memory) leaves the input behind. Costs a file write per run.
    pub save_current: bool,
    /// An execution slower than this is reported (and written as `slow-<hash>`).
    pub slow: Duration,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: None,
            runs: Some(1000),
            seed: 1,
            max_len: None,
            corpus: Vec::new(),
            artifacts: None,
            keep_going: false,
            save_new: None,
            save_current: false,
            slow: Duration::from_secs(2),
            verbose: false,
        }
    }
}

/// A crash found by [`fuzz`].
#[derive(Clone, Debug)]
pub struct Crash {
    pub message: String,
    pub input: Vec<u8>,
    pub artifact: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub executions: u64,
    pub seeds: usize,
    pub corpus: usize,
    pub features: usize,
    pub elapsed: Duration,
    pub slowest: Duration,
    pub crashes: Vec<Crash>,
    pub slow_inputs: Vec<PathBuf>,
}

/// A short, stable name for an input.
pub fn input_hash(data: &[u8]) -> String {
    // FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The files of a folder (not recursive), sorted by name; hidden files are skipped.
pub fn read_dir_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"))
        })
        .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
        .collect();
    out.sort();
    out
}

fn write_artifact(dir: &Path, prefix: &str, data: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{prefix}-{}", input_hash(data)));
    std::fs::write(&path, data).ok()?;
    Some(path)
}

/// Identifies a crash for de-duplication: the panic location and the start of its message.
fn crash_key(message: &str) -> String {
    message.chars().take(120).collect()
}

/// Fuzzes `target`: every seed, then mutations, until a limit or (without `keep_going`) the
/// first crash.
pub fn fuzz(target: &Target, opts: &Options) -> Report {
    let start = Instant::now();
    let max_len = opts.max_len.unwrap_or(target.max_len);
    let mut rng = Rng::new(opts.seed);
    let mut mutator = Mutator::new(target.kind, target.dictionary, max_len);
    let mut report = Report::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut crash_keys: HashSet<String> = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut seeds: Vec<Vec<u8>> = opts
        .corpus
        .iter()
        .flat_map(|d| read_dir_inputs(d))
        .map(|(_, d)| d)
        .collect();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    report.seeds = seeds.len();
    let mut last_print = Instant::now();

    let out_of_budget = |report: &Report| {
        opts.runs.is_some_and(|r| report.executions >= r)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
    };

    let mut pending_seeds = seeds.into_iter();
    loop {
        if out_of_budget(&report) {
            break;
        }
        let (input, is_seed) = match pending_seeds.next() {
            Some(s) => (s, true),
            None => {
                let parent = &corpus[rng.below(corpus.len())];
                (mutator.mutate(parent, &corpus, &mut rng), false)
            }
        };
        if opts.save_current {
            if let Some(dir) = &opts.artifacts {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join("current"), &input);
            }
        }
        let t0 = Instant::now();
        let result = run_one(target, &input);
        let took = t0.elapsed();
        report.executions += 1;
        report.slowest = report.slowest.max(took);
        if took >= opts.slow {
            if let Some(p) = opts
                .artifacts
                .as_ref()
                .and_then(|d| write_artifact(d, "slow", &input))
            {
                eprintln!(
                    "weft-fuzz {}: slow input ({took:?}) written to {}",
                    target.name,
                    p.display()
                );
                report.slow_inputs.push(p);
            }
        }
        match result {
            Ok(features) => {
                let mut new = false;
                for h in features.hashes() {
                    new |= seen.insert(*h);
                }
                if new || is_seed {
                    if new && !is_seed {
                        if let Some(dir) = &opts.save_new {
                            let _ = write_artifact(dir, "new", &input);
                        }
                    }
                    if corpus.len() < 20_000 {
                        corpus.push(input);
                    }
                }
            }
            Err(message) => {
                if crash_keys.insert(crash_key(&message)) {
                    let artifact = opts
                        .artifacts
                        .as_ref()
                        .and_then(|d| write_artifact(d, "crash", &input));
                    eprintln!(
                        "weft-fuzz {}: CRASH after {} runs: {message}\n  input ({} bytes) {}",
                        target.name,
                        report.executions,
                        input.len(),
                        artifact
                            .as_ref()
                            .map(|p| format!("written to {}", p.display()))
                            .unwrap_or_else(|| format!("{:?}", String::from_utf8_lossy(&input)))
                    );
                    report.crashes.push(Crash {
                        message,
                        input: input.clone(),
                        artifact,
                    });
                    if !opts.keep_going {
                        break;
                    }
                }
                if corpus.is_empty() {
                    corpus.push(input);
                }
            }
        }
        if opts.verbose && last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "weft-fuzz {}: {} runs, {:.0}/s, corpus {}, outcomes {}, crashes {}",
                target.name,
                report.executions,
                report.executions as f64 / start.elapsed().as_secs_f64(),
                corpus.len(),
                seen.len(),
                report.crashes.len()
            );
        }
    }
    report.corpus = corpus.len();
    report.features = seen.len();
    report.elapsed = start.elapsed();
    report
}

/// Runs `target` on every file of `dir`; returns the files that crash, with the panic.
pub fn replay(target: &Target, dir: &Path) -> (usize, Vec<(PathBuf, String)>) {
    let inputs = read_dir_inputs(dir);
    let failures = inputs
        .iter()
        .filter_map(|(p, d)| run_one(target, d).err().map(|e| (p.clone(), e)))
        .collect();
    (inputs.len(), failures)
}

/// The `fuzz/` folder of this crate (corpus, regressions, pending, artifacts).
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
