use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

/// The daemon allocates for every event it records; glibc's allocator was a quarter of
/// its time under load (measured with `perf` during `cargo xtask bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs also go to journald and files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match agentwarden::cli::main(agentwarden::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
