//! The `high-templar` binary: the library's [`Server`] with the default HTTP backend.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use high_templar::config::{Cli, Config};
use high_templar::Server;

/// mimalloc rather than glibc's allocator: a trigger's frames are allocated on the thread that
/// publishes and freed on the connections' threads, which glibc handles with arena locks and
/// consolidation (7.7 % of the server's CPU in the `rooms` benchmark). `rooms` 10k x 10, four
/// alternating runs each: 78/80/73/75k msgs/s with glibc, 84/89/79/88k with mimalloc.
/// It asks for transparent huge pages, which costs ~10 MiB of RSS from the start (2,000
/// connections: 28.4 MiB, 18.6 MiB without) and is worth it: fan-out 10k x 100, three
/// alternating runs, 694/698/748k msgs/s with them, 521/560/572k without.
/// `MIMALLOC_ALLOW_THP=0` in the environment trades the one for the other.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Logs on stderr (as the README says), in colour only for a person at a terminal,
        // not in journald or a log file.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("high-templar: {error}");
            return ExitCode::from(2);
        }
    };
    let grace = config.policy.shutdown_grace;
    let handle = match Server::new(config).start().await {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("high-templar: {error}");
            return ExitCode::from(2);
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down: closing connections with 1001");
    handle.shutdown(grace).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
