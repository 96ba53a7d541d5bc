//! `weft compile -f DIR`: what each proxy will be told, every SMI object's conditions, and each
//! Gateway API route's `status.parents[]` with the proxy routes it became.

use std::path::Path;

use anyhow::{bail, Context};
use weft_core::compile::CompileOptions;

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
    let mut report = super::routes::compile_dir(path, &opts)
        .with_context(|| format!("compiling {}", path.display()))?;
    if let Some(p) = proxy {
        if !report.base.retain_proxy(p) {
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
    for e in &report.base.load_errors {
        eprintln!("weft compile: {e:?}");
    }
    let rejected = report.base.objects.iter().any(|o| {
        o.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status != "True")
    });
    // A route is judged as `weft check` judges it (Accepted and ResolvedRefs).
    let mut routes_failed = false;
    for r in &report.routes {
        let c = super::routes::judge_route(r);
        if c.outcome == super::check::Outcome::Fail {
            eprintln!("weft compile: {}: {}", c.name, c.detail);
            routes_failed = true;
        }
    }
    Ok(
        if report.base.load_errors.is_empty() && !rejected && !routes_failed {
            0
        } else {
            1
        },
    )
}
