//! What the tests that run `weft demo` for real share: the sibling binaries it starts, and a
//! demo started in the background whose output is read up to a line.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

fn target_dir_binary(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft")).with_file_name(name)
}

/// Makes sure the sibling binaries the demo starts exist (cargo only builds this package's).
pub fn ensure_binaries() {
    let missing = ["weft-operator", "weft-proxy"]
        .iter()
        .any(|b| !target_dir_binary(b).is_file());
    if missing {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "weft-operator", "-p", "weft-proxy", "--bins"])
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "building weft-operator and weft-proxy failed"
        );
    }
}

/// A `weft demo --plain` running in the background and its output not read yet.
pub struct Background {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

/// Starts `weft demo --plain` on the loopback /24 `prefix` with `args`, its logs in `dir`, its
/// stdout piped (read it: the demo stops at its next line once stdout is closed).
pub fn spawn_demo(prefix: &str, args: &[&str], dir: &Path) -> Background {
    ensure_binaries();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--plain", "--ip-prefix", prefix])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running weft demo");
    let stdout = child.stdout.take().expect("stdout");
    Background {
        child,
        lines: BufReader::new(stdout).lines(),
    }
}

impl Background {
    /// Reads the demo's output up to the first line that contains `marker`; returns what it
    /// read and whether the marker came (the demo may end first).
    pub fn read_until(&mut self, marker: &str) -> (String, bool) {
        let mut seen = String::new();
        for line in self.lines.by_ref() {
            let line = line.unwrap_or_default();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(marker) {
                return (seen, true);
            }
        }
        (seen, false)
    }
}
