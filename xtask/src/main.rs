//! Project tasks: `cargo xtask setup | build | run | test`.
//!
//! `setup` installs what a fresh Debian machine lacks, idempotently; `run` and `test` call
//! it first so the README's two commands work from nothing.

mod bench;
mod guard;
mod peers;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain (LLVM 22 dev packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the daemon (release) with the embedded eBPF object.
    Build,
    /// Run the demo daemon on its embedded defaults (needs root).
    Run {
        /// Extra arguments for `agentwarden daemon`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// agentwarden's cost against the same machine without it, side by side in one run
    /// (results in target/bench/: results.md, results.json, overhead.png). Needs root.
    Bench {
        /// A short smoke run (what CI executes; its figures are not meaningful).
        #[arg(long)]
        quick: bool,
        /// Only this part: `drift` (the out-of-band analyser's time and interference),
        /// `profile` (the daemon's CPU time per tracked spawn and recorded event, by
        /// thread, with `perf` flame graphs under `target/bench/`), or `throughput`
        /// (the event-rate steps and the footprint, printed as JSON).
        #[arg(long, value_parser = ["drift", "profile", "throughput"])]
        only: Option<String>,
    },
    /// Formatting, clippy (user and eBPF crates), unit and kernel tests on the host, then
    /// the kernel tests in QEMU on each kernel of the matrix (BPF-LSM active).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Only the VM tier.
        #[arg(long)]
        vm: bool,
        /// Only the host tier.
        #[arg(long, conflicts_with = "vm")]
        host: bool,
        /// VM tier on this kernel only (6.12 or 6.1).
        #[arg(long)]
        kernel: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build_release()
        }
        Cmd::Run { args } => {
            setup::run()?;
            build_release()?;
            run_demo(&args)
        }
        Cmd::Bench { quick, only } => {
            setup::run()?;
            bench::run(quick, only.as_deref())
        }
        Cmd::Test {
            filter,
            vm,
            host,
            kernel,
        } => {
            setup::run()?;
            let tiers = test::Tiers {
                host: !vm,
                vm: !host,
                kernel: kernel.as_deref(),
            };
            test::run(filter.as_deref(), tiers)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, failing with its command line.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn build_release() -> Result<()> {
    run_cmd(Command::new("cargo").args(["build", "--release", "--package", "agent-user"]))
}

fn run_demo(args: &[String]) -> Result<()> {
    let bin = workspace_root().join("target/release/agentwarden");
    let is_root = rustix_is_root();
    let mut cmd = if is_root {
        Command::new(&bin)
    } else {
        eprintln!("agentwarden loads eBPF programs and needs root: running it with sudo");
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    // A demo leaves nothing attached when it stops (Ctrl-C); the installed daemon keeps
    // its kernel side pinned across restarts.
    cmd.arg("daemon").arg("--detach-on-exit").args(args);
    eprintln!(
        "demo daemon: events print here and go to /var/lib/agentwarden/events.jsonl.\n\
         In another terminal try:\n  sudo {bin} run --profile demo -- bash -c 'cat /etc/hostname; curl -s http://127.0.0.1:1 || true'\n  \
         sudo {bin} events\n",
        bin = bin.display()
    );
    run_cmd(&mut cmd)
}

pub fn rustix_is_root() -> bool {
    // `id -u` keeps xtask free of libc bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}
