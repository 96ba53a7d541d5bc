//! Binaries of this workspace (debug builds), for tests that run them outside pods, exposed in
//! one folder. Pods do not use them: the kubelet stand-in runs pods from the images
//! (`scripts/build-images.sh`, [`crate::images`]).
//!
//! Tests cannot run cargo themselves (the build directory is locked while `cargo test` runs), so
//! build the other crates' binaries first:
//! `cargo build -p weft-proxy -p weft-operator --bins` (CI does this before the e2e tests).

use std::path::{Path, PathBuf};

/// The folder cargo puts debug binaries in (`CARGO_TARGET_DIR` or `<repo>/target`, `debug`).
pub fn target_debug() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cluster::repo_root().join("target"))
        .join("debug")
}

/// A folder (0755, usable by the proxy's uid) with a symlink per binary: `bins` are looked up in
/// [`target_debug`], `extra` are `(name, path)`. The error names what is missing.
pub fn bin_dir(
    bins: &[&str],
    extra: &[(&str, &Path)],
) -> Result<(tempfile::TempDir, PathBuf), String> {
    let target = target_debug();
    let missing: Vec<&str> = bins
        .iter()
        .copied()
        .filter(|b| !target.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{missing:?} not built in {} (run `cargo build -p weft-proxy -p weft-operator --bins`)",
            target.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("weft-bins-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    for bin in bins {
        let src = target.join(bin);
        std::os::unix::fs::symlink(&src, dir.path().join(bin))
            .map_err(|e| format!("{}: {e}", src.display()))?;
    }
    for (name, path) in extra {
        std::os::unix::fs::symlink(path, dir.path().join(name))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let path = dir.path().to_path_buf();
    Ok((dir, path))
}
