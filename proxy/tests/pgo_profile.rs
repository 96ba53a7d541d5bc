//! The proxy's profile-guided optimization profile (`proxy/pgo/`) is committed, like the other
//! generated files, and fails here when it no longer fits the workspace.
//!
//! A profile names functions by their mangled symbols. Their hashes come from cargo's metadata
//! for each crate: the compiler's version and the crate's name, version, features and
//! dependencies. With another rustc or another resolved dependency tree of `weft-proxy` the
//! shipped proxy would still build and be correct, but silently without most of its
//! optimization (docs/benchmarks.md, "Profile-guided optimization of the proxy"). The fix is
//! `proxy/pgo/train.sh`. A change to the proxy's own code does not fail here: a changed
//! function loses only its own counts, and `scripts/build-dist.sh` says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profile_meta() -> String {
    std::fs::read_to_string(repo().join("proxy/pgo/PROFILE")).expect("proxy/pgo/PROFILE")
}

/// `rustc:` and `dependencies:` as `scripts/build-dist.sh --profile-key` computes them, the one
/// home of the key (proxy/pgo/train.sh records it with the same call).
fn current_key() -> String {
    let out = Command::new(repo().join("scripts/build-dist.sh"))
        .arg("--profile-key")
        .current_dir(repo())
        .output()
        .expect("run scripts/build-dist.sh --profile-key");
    assert!(
        out.status.success(),
        "scripts/build-dist.sh --profile-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_profile_was_made_for_this_rustc_and_dependency_tree() {
    let meta = profile_meta();
    let recorded: Vec<&str> = meta
        .lines()
        .filter(|l| l.starts_with("rustc: ") || l.starts_with("dependencies: "))
        .collect();
    let current = current_key();
    let current: Vec<&str> = current.lines().collect();
    assert_eq!(
        recorded, current,
        "proxy/pgo/PROFILE was made for another rustc or dependency tree of weft-proxy, so most \
         of the profile no longer applies to the shipped proxy: run proxy/pgo/train.sh and \
         commit proxy/pgo/"
    );
}

#[test]
fn the_profile_is_an_indexed_llvm_profile_of_the_proxy() {
    let gz = repo().join("proxy/pgo/weft-proxy.profdata.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .expect("run gzip -dc");
    assert!(out.status.success(), "{} does not decompress", gz.display());
    let data = out.stdout;
    // llvm-profdata's indexed format: magic 0xff6c70726f66690a's variant "\xfflprofi\x81".
    assert_eq!(
        data.get(..8),
        Some(&b"\xfflprofi\x81"[..]),
        "not an indexed LLVM profile"
    );
    // Trained on the proxy's request path: its per-request functions have counts (a sparse
    // profile has records only for functions that ran).
    let text = String::from_utf8_lossy(&data);
    for hot in ["outbound", "inbound", "classify", "metrics"] {
        let needle = format!("weft_proxy{}{}", hot.len(), hot);
        assert!(
            text.contains(&needle),
            "the profile has no function of weft_proxy::{hot} ({needle}): was it trained on \
             proxy traffic?"
        );
    }
    // The LLVM that wrote it is the one that will read it (scripts/build-dist.sh refuses a
    // profile of another major version: its format may not be readable).
    let meta = profile_meta();
    let made_by = meta
        .lines()
        .find_map(|l| l.strip_prefix("llvm: "))
        .expect("proxy/pgo/PROFILE names the LLVM that made it");
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let reads_with = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .expect("rustc -vV names its LLVM");
    assert_eq!(
        made_by.split('.').next(),
        reads_with.split('.').next(),
        "the profile was written by LLVM {made_by}, rustc has LLVM {reads_with}"
    );
}
