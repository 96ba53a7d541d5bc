//! `weft-fuzz`: runs weft's fuzz targets on the stable toolchain. See `docs/fuzzing.md`.
//!
//! ```text
//! weft-fuzz list
//! weft-fuzz <target|all> [--seconds N | --runs N] [--seed N] [--max-len N] [--keep-going]
//!                        [--save-new] [--save-current] [--corpus DIR]...
//! weft-fuzz replay <target|all> [regressions|pending|corpus|DIR]
//! weft-fuzz seed          (re)writes fuzz/corpus/ from examples/ and built-in cases
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use weft_fuzz::driver::{self, fuzz_dir, Options};
use weft_fuzz::{target, Target, TARGETS};

fn usage() -> ExitCode {
    eprintln!(
        "usage: weft-fuzz list\n       weft-fuzz <target|all> [--seconds N | --runs N] [--seed N] [--max-len N] [--keep-going] [--save-new] [--save-current] [--corpus DIR]...\n       weft-fuzz replay <target|all> [regressions|pending|corpus|DIR]\n       weft-fuzz seed\ntargets: {}",
        TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
    );
    ExitCode::from(2)
}

fn targets_named(name: &str) -> Option<Vec<&'static Target>> {
    if name == "all" {
        Some(TARGETS.iter().collect())
    } else {
        target(name).map(|t| vec![t])
    }
}

fn replay(args: &[String]) -> ExitCode {
    let Some(ts) = args.first().and_then(|n| targets_named(n)) else {
        return usage();
    };
    let which = args.get(1).map(String::as_str).unwrap_or("regressions");
    let mut failed = false;
    for t in ts {
        let dir = match which {
            "regressions" | "pending" | "corpus" => fuzz_dir().join(which).join(t.name),
            other => PathBuf::from(other),
        };
        let (n, failures) = driver::replay(t, &dir);
        println!(
            "{}: {n} inputs from {}, {} crash",
            t.name,
            dir.display(),
            failures.len()
        );
        for (p, msg) in failures {
            failed = true;
            println!("  {}: {msg}", p.display());
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    match cmd.as_str() {
        "list" => {
            for t in TARGETS {
                println!("{:18} {}", t.name, t.about);
            }
            return ExitCode::SUCCESS;
        }
        "seed" => {
            let dir = fuzz_dir();
            let repo = dir.parent().map(PathBuf::from).unwrap_or_default();
            return match weft_fuzz::seeds::write_corpus(&dir, &repo) {
                Ok(n) => {
                    println!(
                        "wrote {n} seed inputs under {}",
                        dir.join("corpus").display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weft-fuzz seed: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        "replay" => return replay(&args[1..]),
        "-h" | "--help" | "help" => {
            usage();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let Some(ts) = targets_named(cmd) else {
        return usage();
    };
    let mut opts = Options {
        runs: None,
        verbose: true,
        ..Options::default()
    };
    let mut seconds: Option<f64> = None;
    let mut extra_corpus = Vec::new();
    let mut save_new = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--seconds" => seconds = value().parse().ok(),
            "--runs" => opts.runs = value().parse().ok(),
            "--seed" => opts.seed = value().parse().unwrap_or(1),
            "--max-len" => opts.max_len = value().parse().ok(),
            "--corpus" => extra_corpus.push(PathBuf::from(value())),
            "--keep-going" => opts.keep_going = true,
            "--save-new" => save_new = true,
            "--save-current" => opts.save_current = true,
            "--quiet" => opts.verbose = false,
            _ => return usage(),
        }
    }
    if seconds.is_none() && opts.runs.is_none() {
        seconds = Some(60.0);
    }
    opts.duration = seconds.map(Duration::from_secs_f64);
    // A thread with the stack of a tokio worker (where the operator and proxy run this code),
    // so that a stack overflow found here is one production can hit.
    let stack = if cfg!(debug_assertions) { 16 } else { 2 } << 20;
    let mut crashed = false;
    for t in ts {
        let dir = fuzz_dir();
        let mut o = opts.clone();
        o.corpus = vec![
            dir.join("corpus").join(t.name),
            dir.join("regressions").join(t.name),
        ];
        o.corpus.extend(extra_corpus.iter().cloned());
        o.artifacts = Some(dir.join("artifacts").join(t.name));
        if save_new {
            o.save_new = Some(dir.join("artifacts").join(t.name).join("new"));
        }
        let report = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || driver::fuzz(t, &o))
            .and_then(|h| {
                h.join()
                    .map_err(|_| std::io::Error::other("driver panicked"))
            });
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("weft-fuzz {}: {e}", t.name);
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{}: {} runs in {:.1}s ({:.0}/s), {} seeds, corpus {}, outcomes {}, slowest {:?}, crashes {}",
            t.name,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.executions as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.seeds,
            report.corpus,
            report.features,
            report.slowest,
            report.crashes.len()
        );
        for c in &report.crashes {
            crashed = true;
            println!(
                "  crash: {}\n    input: {}",
                c.message.lines().next().unwrap_or(""),
                c.artifact
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
