//! Regenerates the Rust code for the protos and fails when it differs from the committed files
//! in `src/gen/`. Run `WEFT_UPDATE_CODEGEN=1 cargo test -p weft-proxy-api --test codegen` to
//! rewrite them after editing a `.proto`.

use std::path::{Path, PathBuf};

const UPDATE_ENV: &str = "WEFT_UPDATE_CODEGEN";
const PROTOS: &[&str] = &[
    "weft/proxy/v1/types.proto",
    "weft/proxy/v1/discovery.proto",
    "weft/proxy/v1/identity.proto",
    "weft/tap/v1/tap.proto",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Generates the code into `out` and returns the generated `*.rs` file names, sorted.
fn generate(out: &Path) -> Vec<String> {
    let proto_dir = crate_dir().join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let fds = match protox::compile(&files, [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("protos do not compile: {e:?}"),
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `connect()` needs only `tonic::transport::Endpoint`, which the `client` feature enables.
        .build_transport(true)
        .client_mod_attribute(".", r#"#[cfg(feature = "client")]"#)
        .server_mod_attribute(".", r#"#[cfg(feature = "server")]"#)
        // Deterministic iteration (and encoding) order for `map<>` fields.
        .btree_map(".")
        .emit_rerun_if_changed(false)
        .out_dir(out)
        .compile_fds(fds)
    {
        panic!("code generation failed: {e}");
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    names.sort();
    names
}

fn read(path: &Path) -> Option<String> {
    // Normalise line endings so a checkout with CRLF conversion does not count as drift.
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.replace("\r\n", "\n"))
}

#[test]
fn generated_code_is_up_to_date() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let names = generate(tmp.path());
    assert!(!names.is_empty(), "the generator produced no files");
    let gen_dir = crate_dir().join("src").join("gen");

    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&gen_dir).unwrap_or_else(|e| panic!("create gen dir: {e}"));
        for name in &names {
            let fresh = read(&tmp.path().join(name)).unwrap_or_default();
            std::fs::write(gen_dir.join(name), fresh)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        return;
    }

    let mut committed: Vec<String> = std::fs::read_dir(&gen_dir)
        .map(|rd| {
            rd.filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".rs"))
                .collect()
        })
        .unwrap_or_default();
    committed.sort();

    let mut drift = Vec::new();
    for name in &names {
        if read(&tmp.path().join(name)) != read(&gen_dir.join(name)) {
            drift.push(format!("{name}: differs or missing"));
        }
    }
    for name in committed.iter().filter(|n| !names.contains(n)) {
        drift.push(format!("{name}: no longer generated"));
    }
    assert!(
        drift.is_empty(),
        "generated proto code in proxy-api/src/gen is out of date ({}).\n\
         Regenerate with: {UPDATE_ENV}=1 cargo test -p weft-proxy-api --test codegen",
        drift.join("; ")
    );
}
