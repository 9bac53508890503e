//! `cargo xtask test`: the project's whole check, as CI runs it.

use std::process::Command;

use anyhow::Result;

use crate::run_cmd;

/// Which tiers to run.
pub struct Tiers<'a> {
    pub host: bool,
    pub vm: bool,
    pub kernel: Option<&'a str>,
}

pub fn run(filter: Option<&str>, tiers: Tiers<'_>) -> Result<()> {
    if tiers.host {
        host(filter)?;
        if filter.is_none() && crate::setup::is_root() {
            // The benchmark harness must keep working: a smoke run (no timing is judged).
            crate::bench::run(true)?;
        }
    }
    if tiers.vm {
        crate::vm::run(tiers.kernel, filter)?;
    }
    Ok(())
}

fn host(filter: Option<&str>) -> Result<()> {
    if !crate::setup::is_root() {
        eprintln!(
            "note: not root — kernel tests will be skipped (with their reason); \
             under CI=true they fail instead"
        );
    }
    // rustfmt's import grouping (StdExternalCrate) is a nightly option.
    run_cmd(Command::new("cargo").args(["+nightly", "fmt", "--all", "--", "--check"]))?;
    run_cmd(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "clippy", "--package", "agent-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;
    let mut test = Command::new("cargo");
    // Unit tests, then the kernel tests last (no doc-tests: the closing summary line
    // is the kernel tier's).
    test.args([
        "test",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--exclude",
        "xtask",
    ])
    .args(["--lib", "--tests"])
    // The end-to-end test runs the real Claude Code that `setup` installed.
    .env("AGENTWARDEN_CLAUDE_CODE", crate::setup::claude_code_bin());
    if let Some(f) = filter {
        test.arg("--").arg(f);
    }
    run_cmd(&mut test)
}
