//! The processes the demo starts: found next to `weft`, logged to files, stopped on exit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Finds a weft binary: `$WEFT_<NAME>_BIN`, then next to the running executable (the same cargo
/// target folder), then on `PATH`.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let env_key = format!(
        "WEFT_{}_BIN",
        name.trim_start_matches("weft-").to_uppercase()
    );
    if let Some(p) = std::env::var_os(&env_key) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            // `cargo test` runs binaries from target/<profile>/deps.
            if let Some(parent) = dir.parent() {
                let candidate = parent.join(name);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "cannot find `{name}`: build it with `cargo build --release` (it is looked for next to \
         `weft`, then on PATH; set {env_key} to override)"
    )
}

/// Children that are killed when this is dropped (or on `stop_all`).
#[derive(Default)]
pub struct Supervisor {
    children: BTreeMap<String, Child>,
}

impl Supervisor {
    /// Starts `program` with `args` and `env`, output appended to `log`.
    pub fn spawn(
        &mut self,
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().unwrap_or(0);
        self.children.insert(label.to_owned(), child);
        Ok(pid)
    }

    /// The label of a child that has exited, with its status, if any.
    pub fn exited(&mut self) -> Option<(String, String)> {
        for (label, child) in self.children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((label.clone(), status.to_string()));
            }
        }
        None
    }

    /// Asks every child to stop (SIGTERM via `kill`), waits briefly, then kills what is left.
    pub async fn stop_all(&mut self) {
        for child in self.children.values() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for child in self.children.values_mut() {
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }
}
