use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

/// The daemon allocates for every event it records; glibc's allocator was a quarter of
/// its time under load (measured with `perf` during `cargo xtask bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc's option enum.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Memory freed after start-up (kernel BTF parsing, program loading) and after a burst
    // goes back to the system (a second later, or when the daemon collects while idle)
    // instead of staying resident: the idle daemon's heap drops from ~65 MiB to ~13 MiB
    // (/proc/PID/status). Not sooner: under load, pages purged at once were faulted
    // (and zeroed) straight back in, half the daemon's time in `perf`.
    // SAFETY: plain option setters of the allocator, called before any thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
    }
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
