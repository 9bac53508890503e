//! Idempotent toolchain installation. Each step checks first and only acts when
//! something is missing; a second run reports everything in place within seconds.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::{run_cmd, vm};

/// Debian packages bpf-linker's LLVM 22 backend links against.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];
const BPF_LINKER_VERSION: &str = "0.13";
/// Claude Code, the real agent the end-to-end kernel test runs under its profile
/// (pinned: the test scripts its tool calls and reads its output format).
const CLAUDE_CODE_PACKAGE: &str = "@anthropic-ai/claude-code";
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";
const AGENTS_DIR: &str = "/var/cache/agentwarden/agents/claude-code";

/// The Claude Code binary `setup` installs.
pub fn claude_code_bin() -> String {
    format!("{AGENTS_DIR}/node_modules/.bin/claude")
}

pub fn run() -> Result<()> {
    let mut did = Vec::new();
    let mut packages: Vec<&str> = APT_PACKAGES.to_vec();
    packages.extend(vm::HOST_PACKAGES);
    // A kernel of the matrix whose image is missing is (re)installed, never skipped.
    let missing_kernels: Vec<&str> = vm::MATRIX
        .iter()
        .filter(|k| vm::vmlinuz(k).is_none())
        .map(|k| k.package)
        .collect();
    apt(&packages, &missing_kernels, &mut did)?;
    for k in vm::MATRIX {
        if vm::vmlinuz(k).is_none() {
            bail!(
                "kernel {} still missing after installing {}",
                k.label,
                k.package
            );
        }
    }
    nightly(&mut did)?;
    bpf_linker(&mut did)?;
    virtme_ng(&mut did)?;
    claude_code(&mut did)?;
    matplotlib(&mut did)?;
    if did.is_empty() {
        eprintln!(
            "setup: everything in place (LLVM 22, nightly {NIGHTLY_COMPONENTS:?}, bpf-linker, \
             qemu, virtme-ng, Claude Code {CLAUDE_CODE_VERSION}, matplotlib, kernels {})",
            vm::MATRIX
                .iter()
                .map(|k| k.label)
                .collect::<Vec<_>>()
                .join(" ")
        );
    } else {
        eprintln!("setup: installed {}", did.join(", "));
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn apt(packages: &[&str], reinstall: &[&str], did: &mut Vec<String>) -> Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    missing.extend(reinstall);
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run_cmd(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    if !reinstall.is_empty() {
        args.push("--reinstall");
    }
    args.extend(&missing);
    run_cmd(&mut apt(&args))?;
    did.push(format!("apt: {}", missing.join(" ")));
    Ok(())
}

fn nightly(did: &mut Vec<String>) -> Result<()> {
    if !quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("nightly toolchain".into());
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    for c in NIGHTLY_COMPONENTS {
        if !installed.lines().any(|l| l.starts_with(c)) {
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                c,
                "--toolchain",
                "nightly",
            ]))?;
            did.push(format!("nightly {c}"));
        }
    }
    Ok(())
}

fn bpf_linker(did: &mut Vec<String>) -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    // Without LLVM_PREFIX the build cannot find libLLVM (`unable to find library -lLLVM`).
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !output(Command::new("bpf-linker").arg("--version")).contains("bpf-linker") {
        bail!("bpf-linker installed but not on PATH (is ~/.cargo/bin in PATH?)");
    }
    did.push("bpf-linker".into());
    Ok(())
}

pub fn is_root() -> bool {
    crate::rustix_is_root()
}

/// virtme-ng boots a kernel on the host's own filesystem under QEMU.
fn virtme_ng(did: &mut Vec<String>) -> Result<()> {
    if quiet(Command::new("vng").arg("--version")) {
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", "virtme-ng"]))?;
    if !quiet(Command::new("vng").arg("--version")) {
        bail!("virtme-ng installed but `vng` is not on PATH");
    }
    did.push("virtme-ng".into());
    Ok(())
}

/// Claude Code from npm, pinned, into a cache directory of its own (the package's
/// postinstall puts the native binary in place).
fn claude_code(did: &mut Vec<String>) -> Result<()> {
    let bin = claude_code_bin();
    if output(Command::new(&bin).arg("--version")).contains(CLAUDE_CODE_VERSION) {
        return Ok(());
    }
    std::fs::create_dir_all(AGENTS_DIR)?;
    run_cmd(
        Command::new("npm")
            .args([
                "install",
                "--prefer-online",
                "--no-fund",
                "--no-audit",
                "--prefix",
            ])
            .arg(AGENTS_DIR)
            .arg(format!("{CLAUDE_CODE_PACKAGE}@{CLAUDE_CODE_VERSION}")),
    )?;
    let version = output(Command::new(&bin).arg("--version"));
    if !version.contains(CLAUDE_CODE_VERSION) {
        bail!("Claude Code installed in {AGENTS_DIR} but `{bin} --version` says `{version}`");
    }
    did.push(format!("Claude Code {CLAUDE_CODE_VERSION}"));
    Ok(())
}

/// matplotlib draws the benchmark's chart.
fn matplotlib(did: &mut Vec<String>) -> Result<()> {
    if quiet(Command::new("python3").args(["-c", "import matplotlib"])) {
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", "matplotlib"]))?;
    if !quiet(Command::new("python3").args(["-c", "import matplotlib"])) {
        bail!("matplotlib installed but not importable by python3");
    }
    did.push("matplotlib".into());
    Ok(())
}
