//! `weft compile -f DIR`: what each proxy will be told, and every SMI object's conditions.

use std::path::Path;

use anyhow::{bail, Context};
use weft_core::compile::CompileOptions;
use weft_manifests::compile_dir;

use crate::OutputFormat;

/// Prints the report; returns the exit code (1 when files failed to load or objects are not accepted).
pub fn run(
    path: &Path,
    proxy: Option<&str>,
    format: OutputFormat,
    trust_domain: &str,
) -> anyhow::Result<u8> {
    if !path.exists() {
        bail!(
            "{} does not exist; pass a folder of manifests with -f",
            path.display()
        );
    }
    let opts = CompileOptions {
        trust_domain: trust_domain.to_owned(),
        ..CompileOptions::default()
    };
    let mut report =
        compile_dir(path, &opts).with_context(|| format!("compiling {}", path.display()))?;
    if let Some(p) = proxy {
        if !report.retain_proxy(p) {
            bail!(
                "no meshed pod {p} in {} (pods need the weft.io/proxy-version label)",
                path.display()
            );
        }
    }
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", serde_yaml::to_string(&report)?),
    }
    for e in &report.load_errors {
        eprintln!("weft compile: {e:?}");
    }
    let rejected = report.objects.iter().any(|o| {
        o.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status != "True")
    });
    Ok(if report.load_errors.is_empty() && !rejected {
        0
    } else {
        1
    })
}
