//! The architecture rules of issue #14, checked on the real workspace (docs/architecture.md):
//!
//! - the core crate (model, analysis, compiler) links no async runtime, Kubernetes client, gRPC,
//!   protobuf, HTTP or file-watching crate;
//! - the CLI does not link the operator (its compile, diff and inject paths use the core);
//! - no import cycles between the modules of any weft crate: two sibling modules never use each
//!   other, directly or through other siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Package names in the normal (non-dev) dependency tree of `package`, itself included.
fn dependency_names(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn core_links_no_runtime_client_grpc_or_protobuf() {
    let deps = dependency_names("weft-core");
    let forbidden = [
        "tokio",
        "mio",
        "kube",
        "kube-client",
        "kube-runtime",
        "tonic",
        "prost",
        "hyper",
        "notify",
        "rustls",
        "weft-operator",
        "weft-proxy-api",
    ];
    let found: Vec<&str> = forbidden
        .iter()
        .copied()
        .filter(|f| deps.contains(*f))
        .collect();
    assert!(
        found.is_empty(),
        "weft-core depends on {found:?} (see `cargo tree -p weft-core -i <crate>`)"
    );
}

#[test]
fn cli_does_not_link_the_operator() {
    let deps = dependency_names("weft-cli");
    assert!(
        deps.contains("weft-core"),
        "the CLI compiles with weft-core"
    );
    for crate_name in ["weft-operator", "tonic", "notify"] {
        assert!(
            !deps.contains(crate_name),
            "weft-cli depends on {crate_name} (see `cargo tree -p weft-cli -i {crate_name}`)"
        );
    }
}

/// A module path inside a crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// Every module file of a crate's `src/` (binaries under `src/bin/` are separate crates).
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(src).expect("under src");
            if p.is_dir() {
                if rel != Path::new("bin") && rel != Path::new("gen") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            out.insert(parts, p);
        }
    }
    out
}

/// The code of a file without its `#[cfg(test)]` tail (unit tests may use anything).
fn non_test_code(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Module paths a file's code refers to with `crate::`, `super::` or `self::` (first segments of
/// each path, and of each item of a `{…}` group).
fn references(code: &str, here: &ModPath) -> Vec<ModPath> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut base: ModPath = match anchor {
                "crate::" => Vec::new(),
                // In `a/b.rs`, `self` is `a::b`; `super` is `a`.
                "super::" => {
                    let mut b = here.clone();
                    b.pop();
                    b
                }
                _ => here.clone(),
            };
            // Further `super::` segments.
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            for path in expand(rest) {
                let mut full = base.clone();
                full.extend(path);
                out.push(full);
            }
        }
    }
    out
}

/// The paths at the start of `rest`: `a::b::C` → `[[a, b, C]]`, `{a::X, b}` → `[[a, X], [b]]`.
fn expand(rest: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> (String, usize) {
        let n = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        (s[..n].to_owned(), n)
    };
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0usize;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let inner = &group[..end];
        let mut items = Vec::new();
        let mut depth = 0usize;
        let mut item_start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    items.push(&inner[item_start..i]);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[item_start..]);
        return items.into_iter().flat_map(|it| expand(it.trim())).collect();
    }
    let mut path = Vec::new();
    let mut s = rest;
    loop {
        let (id, n) = ident(s);
        if id.is_empty() {
            break;
        }
        path.push(id);
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return expand(r)
                    .into_iter()
                    .map(|mut p| {
                        let mut full = path.clone();
                        full.append(&mut p);
                        full
                    })
                    .collect();
            }
            Some(r) => s = r,
            None => break,
        }
    }
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path]
    }
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(path: &ModPath, modules: &BTreeMap<ModPath, PathBuf>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
        .unwrap_or_default()
}

/// Cycles among sibling modules of one crate, as readable strings.
fn module_cycles(src: &Path) -> Vec<String> {
    let modules = module_files(src);
    // Edges between the two children of the lowest common ancestor of user and used module.
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (here, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read source");
        for r in references(&non_test_code(&text), here) {
            let target = resolve(&r, &modules);
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == here.len() || common == target.len() {
                continue; // a module and its ancestor or descendant
            }
            edges
                .entry(here[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    let mut cycles = Vec::new();
    let nodes: Vec<ModPath> = edges.keys().cloned().collect();
    for start in &nodes {
        // Is there a path back to `start`? (Reported once per cycle, from its smallest node.)
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(ModPath, Vec<ModPath>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    if trail.iter().all(|t| t >= start) {
                        let names: Vec<String> =
                            trail.iter().chain([start]).map(|p| p.join("::")).collect();
                        cycles.push(names.join(" -> "));
                    }
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    cycles
}

#[test]
fn no_import_cycles_between_modules() {
    let root = workspace();
    let mut all = Vec::new();
    let mut crates = 0;
    for krate in [
        "common",
        "smi",
        "core",
        "manifests",
        "proxy-api",
        "operator",
        "proxy",
        "cli",
    ] {
        let src = root.join(krate).join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        for c in module_cycles(&src) {
            all.push(format!("{krate}: {c}"));
        }
    }
    assert!(crates >= 6, "found only {crates} crates to check");
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;\n").expect("write");
    std::fs::write(
        src.join("a/mod.rs"),
        "mod x; mod y;\nuse crate::b::Thing;\n",
    )
    .expect("write");
    std::fs::write(src.join("a/x.rs"), "use super::y::Y;\n").expect("write");
    std::fs::write(
        src.join("a/y.rs"),
        "use super::{x::X, x};\n#[cfg(test)]\nmod tests { use crate::b; }\n",
    )
    .expect("write");
    std::fs::write(src.join("b.rs"), "use crate::{c::C, a};\n").expect("write");
    std::fs::write(src.join("c.rs"), "// use crate::a;\npub struct C;\n").expect("write");
    let cycles = module_cycles(src);
    assert_eq!(
        cycles,
        ["a -> b -> a", "a::x -> a::y -> a::x"],
        "{cycles:?}"
    );
}
