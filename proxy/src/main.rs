//! weft-proxy: the sidecar. Configured by `WEFT_PROXY_*` environment variables (see
//! docs/proxy.md). Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad
//! configuration.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use weft_proxy::app::{self, LogFormat, ProxyEnv};

fn main() -> ExitCode {
    // Configured by environment only; the one argument it answers is `--version`.
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--version" || arg == "-V" {
            println!("weft-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        eprintln!("weft-proxy: unexpected argument `{arg}`: the proxy is configured by WEFT_PROXY_* environment variables (docs/proxy.md); `--version` prints its version");
        return ExitCode::from(2);
    }
    let env = match ProxyEnv::from_process_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("weft-proxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(&env) {
        eprintln!("weft-proxy: invalid configuration: WEFT_LOG: {e}");
        return ExitCode::from(2);
    }

    // The top of the heap stays with the proxy under load instead of going back to the kernel
    // and being faulted in again with each swing of the requests in flight; the quiet trim
    // returns it (issue #20, `weft_common::memory::keep_heap_top`).
    let kept = weft_common::memory::keep_heap_top(weft_common::memory::HEAP_TOP_KEPT);
    tracing::debug!(
        kept,
        bytes = weft_common::memory::HEAP_TOP_KEPT,
        "heap top kept"
    );

    let mut builder = if env.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(env.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };

    // The signal handler is registered inside the runtime (it needs its reactor), first thing.
    match runtime.block_on(async { app::run(env, shutdown_signal(), None).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "weft-proxy failed");
            eprintln!("weft-proxy: {e}");
            ExitCode::from(if e.is_config() { 2 } else { 1 })
        }
    }
}

fn init_tracing(env: &ProxyEnv) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&env.log_filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs usually go to files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match env.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Completes on SIGTERM or SIGINT. The SIGTERM handler is registered by the call, not on first
/// poll, so a signal that arrives while the proxy is still starting is a graceful shutdown rather
/// than the default action that kills the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
    };
    async move {
        #[cfg(unix)]
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the proxy");
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
