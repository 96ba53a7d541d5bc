//! The bounded fuzz run of CI: every target on its seed corpus plus a fixed number of
//! mutations from a fixed seed (bounded in time too), and a replay of every committed
//! regression input. `fuzz/pending/` (crashes in code not yet fixed) is not replayed here.
//!
//! A longer run: `cargo run --release -p weft-fuzz -- <target> --seconds 600` (docs/fuzzing.md).

use std::time::Duration;

use weft_fuzz::driver::{self, fuzz_dir, Options, Report};
use weft_fuzz::{target, TARGETS};

/// Runs `f` on a thread with a large stack: debug builds use far more stack per frame than
/// the release builds the targets are meant to model.
fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(f)
        .and_then(|h| h.join().map_err(|_| std::io::Error::other("panicked")))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn bounded(name: &'static str, runs: u64) -> Report {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let dir = fuzz_dir();
    let opts = Options {
        runs: Some(runs),
        duration: Some(Duration::from_secs(8)),
        seed: 13,
        corpus: vec![
            dir.join("corpus").join(name),
            dir.join("regressions").join(name),
        ],
        artifacts: Some(dir.join("artifacts").join(name)),
        keep_going: true,
        ..Options::default()
    };
    let report = big_stack(move || driver::fuzz(t, &opts));
    let crashes: Vec<String> = report
        .crashes
        .iter()
        .map(|c| {
            format!(
                "{}\n    input: {}",
                c.message,
                c.artifact
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| format!("{:?}", String::from_utf8_lossy(&c.input)))
            )
        })
        .collect();
    assert!(
        crashes.is_empty(),
        "{name}: {} crash(es) in {} runs:\n  {}",
        crashes.len(),
        report.executions,
        crashes.join("\n  ")
    );
    assert!(
        report.seeds > 1,
        "{name}: no seed corpus in fuzz/corpus/{name}"
    );
    assert!(
        report.executions > report.seeds as u64,
        "{name}: only the seeds ran"
    );
    report
}

#[test]
fn smi_manifests_parse_and_convert_losslessly() {
    bounded("smi", 400);
}

#[test]
fn compiler_output_is_accepted_and_never_widens_access() {
    bounded("compile", 100);
}

#[test]
fn proxy_config_rejects_invalid_resources() {
    bounded("proxy_config", 400);
}

#[test]
fn transport_header_reads_exactly_its_bytes() {
    bounded("transport_header", 20_000);
}

#[test]
fn detection_does_not_depend_on_chunking() {
    bounded("detect", 10_000);
}

#[test]
fn every_committed_regression_input_passes() {
    let dir = fuzz_dir().join("regressions");
    let failures = big_stack(move || {
        let mut failures = Vec::new();
        for t in TARGETS {
            let (_, f) = driver::replay(t, &dir.join(t.name));
            failures.extend(
                f.into_iter()
                    .map(|(p, msg)| format!("{}: {msg}", p.display())),
            );
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pending_inputs_still_crash_or_are_ready_to_move() {
    // Informational: lists pending crashes that no longer crash (fixed: move them to
    // regressions/). Never fails, so that a fix landing elsewhere does not break CI.
    let dir = fuzz_dir().join("pending");
    big_stack(move || {
        for t in TARGETS {
            for (p, data) in driver::read_dir_inputs(&dir.join(t.name)) {
                if driver::run_one(t, &data).is_ok() {
                    eprintln!(
                        "fixed: {} no longer crashes; move it to fuzz/regressions/{}/",
                        p.display(),
                        t.name
                    );
                }
            }
        }
    });
}

fn explodes_on_boom(data: &[u8], f: &mut weft_fuzz::Features) {
    f.hit(data.len().min(4));
    if data.windows(4).any(|w| w == b"boom") {
        panic!("found boom");
    }
}

#[test]
fn a_crash_is_caught_written_and_stops_the_run() {
    let t = weft_fuzz::Target {
        name: "boom",
        about: "test",
        run: explodes_on_boom,
        kind: weft_fuzz::InputKind::Bytes,
        max_len: 64,
        dictionary: &["boom"],
    };
    let base = std::env::temp_dir().join(format!("weft-fuzz-boom-{}", std::process::id()));
    let seeds = base.join("seeds");
    std::fs::create_dir_all(&seeds).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(seeds.join("a"), b"bo").unwrap_or_else(|e| panic!("{e}"));
    let opts = Options {
        runs: Some(100_000),
        seed: 1,
        corpus: vec![seeds],
        artifacts: Some(base.join("artifacts")),
        ..Options::default()
    };
    let t: &'static weft_fuzz::Target = Box::leak(Box::new(t));
    let report = driver::fuzz(t, &opts);
    assert_eq!(report.crashes.len(), 1, "the run stops at the first crash");
    let crash = &report.crashes[0];
    assert!(crash.message.contains("found boom"), "{}", crash.message);
    let written = crash
        .artifact
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    assert_eq!(
        written, crash.input,
        "the crashing input is written to artifacts/"
    );
    assert!(
        report.executions < 100_000,
        "the run went on after the crash"
    );
    let (n, failures) = driver::replay(t, &base.join("artifacts"));
    assert_eq!(
        (n, failures.len()),
        (1, 1),
        "the artifact replays as a crash"
    );
    let _ = std::fs::remove_dir_all(&base);
}
