//! weft: the command line.
#![forbid(unsafe_code)]

mod admin_http;
mod demo;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit codes scripts can rely on.
mod exit {
    /// The command did what was asked and every check passed.
    pub const OK: u8 = 0;
    /// The command ran, but a check failed (a mismatch, a NACK, an unhealthy mesh).
    pub const CHECK_FAILED: u8 = 1;
    /// Bad usage or input (unreadable file, invalid manifest, unknown flag).
    pub const USAGE: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "weft: a small, fast, honest SMI service mesh",
    after_help = "Examples:\n  weft demo                      # a whole mesh on this machine\n  weft compile -f examples/canary # what each proxy will be told\n  weft crds | kubectl apply -f -   # install the SMI CRDs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole mesh on this machine (no cluster, no root) and walk a canary through it.
    #[command(after_help = "Examples:\n  weft demo\n  weft demo --duration 30s --plain   # for CI logs\n  weft demo --keep                   # leave it running and experiment")]
    Demo {
        /// How long the scripted walk takes (canary steps, then the access policy).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Plain line-per-step output (no live view), for logs and CI.
        #[arg(long)]
        plain: bool,
        /// Leave the mesh running at the end and print how to experiment with it.
        #[arg(long)]
        keep: bool,
        /// Folder for the manifests and logs (default: a new folder in the temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// The loopback /24 the demo's pods live on.
        #[arg(long, default_value = "127.42.0", value_parser = parse_prefix)]
        ip_prefix: [u8; 3],
        /// Requests per second from the frontend.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
    /// The sample workload the demo runs (an HTTP server answering with its name and version).
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "")]
        pod: String,
        #[arg(long)]
        listen: SocketAddr,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_prefix(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}` is not three octets like 127.42.0"))?;
    match parts.as_slice() {
        [127, b, c] => Ok([127, *b, *c]),
        [_, _, _] => Err(format!("`{s}`: the demo only uses loopback addresses (127.x.y)")),
        _ => Err(format!("`{s}` is not three octets like 127.42.0")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the runtime: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    rt.block_on(async move {
        match run(cli).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("weft: {e:#}");
                ExitCode::from(exit::USAGE)
            }
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo {
            duration,
            plain,
            keep,
            dir,
            ip_prefix,
            rate,
        } => {
            let ok = demo::run(demo::DemoOptions {
                duration,
                plain,
                keep,
                dir,
                layout: demo::manifests::Layout { prefix: ip_prefix },
                rate,
            })
            .await?;
            Ok(if ok { exit::OK } else { exit::CHECK_FAILED })
        }
        Command::DemoApp {
            name,
            version,
            pod,
            listen,
        } => {
            demo::app::run(demo::app::AppOptions {
                name,
                version,
                pod,
                listen,
            })
            .await?;
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn prefixes_are_loopback_only() {
        assert_eq!(parse_prefix("127.42.0"), Ok([127, 42, 0]));
        assert!(parse_prefix("10.0.0").is_err());
        assert!(parse_prefix("127.0").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
