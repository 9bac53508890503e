//! `cargo xtask test`: the project's whole check, as CI runs it, with the time of each
//! tier printed at the end of every run (also a failed one).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::run_cmd;

/// Which tiers to run.
pub struct Tiers<'a> {
    pub host: bool,
    pub vm: bool,
    pub kernel: Option<&'a str>,
}

/// Wall time of each step, printed when the run ends.
#[derive(Default)]
struct Times {
    started: Option<Instant>,
    steps: Vec<(String, Duration, &'static str)>,
}

impl Times {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        let outcome = if r.is_ok() { "ok" } else { "FAILED" };
        self.steps.push((name.to_owned(), t.elapsed(), outcome));
        r
    }

    fn print(&self) {
        eprintln!("\ntier times:");
        for (name, d, outcome) in &self.steps {
            eprintln!("  {name:<34} {:>7.0} s  {outcome}", d.as_secs_f64());
        }
        if let Some(s) = self.started {
            eprintln!("  {:<34} {:>7.0} s", "total", s.elapsed().as_secs_f64());
        }
    }
}

pub fn run(filter: Option<&str>, tiers: Tiers<'_>) -> Result<()> {
    let mut times = Times {
        started: Some(Instant::now()),
        ..Times::default()
    };
    let r = run_tiers(filter, &tiers, &mut times);
    times.print();
    r
}

fn run_tiers(filter: Option<&str>, tiers: &Tiers<'_>, times: &mut Times) -> Result<()> {
    if tiers.host {
        times.step("lint (rustfmt, clippy)", lint)?;
        times.step("unit and host kernel tests", || host(filter))?;
        if filter.is_none() && crate::setup::is_root() {
            // The benchmark harness must keep working: a smoke run (no timing is judged).
            times.step("bench smoke", || crate::bench::run(true, None))?;
        }
    }
    if tiers.vm {
        if filter.is_none() {
            times.step("vm orphan check", crate::vm::orphan_check)?;
        }
        let t = Instant::now();
        let verdicts = crate::vm::run(tiers.kernel, filter)?;
        for v in &verdicts {
            times.steps.push((
                format!(
                    "vm {} (time scale {})",
                    v.label,
                    v.time_scale.as_deref().unwrap_or("?")
                ),
                Duration::from_secs_f64(v.secs),
                if v.ok { "ok" } else { "FAILED" },
            ));
        }
        let all_ok = verdicts.iter().all(|v| v.ok);
        times.steps.push((
            "vm tier (kernels side by side)".to_owned(),
            t.elapsed(),
            if all_ok { "ok" } else { "FAILED" },
        ));
        if !all_ok {
            bail!("the VM tier failed");
        }
    }
    Ok(())
}

fn lint() -> Result<()> {
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
    )
}

fn host(filter: Option<&str>) -> Result<()> {
    if !crate::setup::is_root() {
        eprintln!(
            "note: not root — kernel tests will be skipped (with their reason); \
             under CI=true they fail instead"
        );
    }
    // The escape probes the route tests run: a binary of another package, built beside
    // the daemon where the tests look for it.
    run_cmd(Command::new("cargo").args(["build", "--package", "awprobe"]))?;
    let mut test = Command::new("cargo");
    // Unit tests (xtask's own included), then the kernel tests last (no doc-tests: the
    // closing summary line is the kernel tier's).
    test.args(["test", "--workspace", "--exclude", "agent-ebpf"])
        .args(["--lib", "--bins", "--tests"])
        // The end-to-end tests run the real agents that `setup` installed.
        .env("AGENTWARDEN_AGENTS_DIR", crate::setup::AGENTS_DIR);
    if let Some(f) = filter {
        test.arg("--").arg(f);
    }
    run_cmd(&mut test)
}
