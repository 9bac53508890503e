//! The VM tier: the kernel test binary, built on the host, run inside QEMU on Debian's
//! distribution kernels booted with `lsm=...,bpf`, so the BPF-LSM layer is proven on the
//! kernels users run (these machines' own kernel cannot load BPF-LSM programs).
//!
//! virtme-ng boots each kernel with the host's filesystem read-only (writes go to a
//! tmpfs overlay), so the guest runs the very binaries the host built.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{run_cmd, workspace_root};

/// One kernel of the matrix: the Debian package that installs it (into /boot and
/// /lib/modules, the cache) and the prefix of its `vmlinuz` file.
pub struct GuestKernel {
    pub label: &'static str,
    pub package: &'static str,
    pub vmlinuz_prefix: &'static str,
}

pub const MATRIX: &[GuestKernel] = &[
    GuestKernel {
        label: "6.12",
        package: "linux-image-6.12-amd64",
        vmlinuz_prefix: "vmlinuz-6.12.",
    },
    // Debian 12's default kernel series.
    GuestKernel {
        label: "6.1",
        package: "linux-image-amd64",
        vmlinuz_prefix: "vmlinuz-6.1.",
    },
];

/// Host packages the VM tier needs besides the kernels (virtme-ng comes from PyPI).
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

/// The active LSMs of the guest: Debian's defaults plus `bpf`.
const LSM_APPEND: &str = "lsm=lockdown,capability,landlock,yama,apparmor,bpf";
/// One kernel's boot and test run; past it the guest counts as stalled.
const PER_KERNEL_TIMEOUT: Duration = Duration::from_secs(900);
/// Printed by the guest after the tests; a guest that never prints it did not report.
const EXIT_MARKER: &str = "AGENTWARDEN_VM_EXIT=";
/// Lines the LSM tests print when their refusals took effect, by test: a guest whose
/// BPF-LSM layer silently did nothing fails even if a test was somehow skipped.
const LSM_PROOFS: &[(&str, &str)] = &[
    (
        "lockdown_exec_is_denied_by_bpf_lsm_or_refused_without_it",
        "bpf-lsm deny took effect on ",
    ),
    (
        "denied_opens_and_execs_are_blocked_with_eperm_by_bpf_lsm_or_refused_without_it",
        "bpf-lsm file/exec block took effect on ",
    ),
];
/// Tracepoints kept enabled in the guest for the whole run (see `boot_and_test`).
const PINNED_EVENTS: &[&str] = &[
    "syscalls/sys_enter_getppid",
    "syscalls/sys_exit_getppid",
    "sched/sched_process_fork",
    "sched/sched_process_exec",
    "sched/sched_process_exit",
];

/// Guest console lines that fail a kernel whatever the tests said.
const KERNEL_FAILURES: &[&str] = &[
    "Kernel panic",
    "Oops",
    "BUG:",
    "kernel BUG at",
    "detected stall",
    "soft lockup",
    "hung_task",
    "Call Trace:",
];

/// The newest installed `vmlinuz` of `k`.
pub fn vmlinuz(k: &GuestKernel) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(k.vmlinuz_prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The kernel test executable, built (not run) on the host.
fn build_test_binary() -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "--package",
            "agent-user",
            "--test",
            "kernel",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the kernel test binary failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "kernel"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report the kernel test executable")
}

/// Result of one kernel.
struct Verdict {
    passed: u32,
    failed: u32,
    ok: bool,
    why: String,
}

/// Runs the VM tier; `only` picks kernels by label, `filter` selects tests.
pub fn run(only: Option<&str>, filter: Option<&str>) -> Result<()> {
    let kernels: Vec<&GuestKernel> = MATRIX
        .iter()
        .filter(|k| only.is_none_or(|o| o == k.label))
        .collect();
    if kernels.is_empty() {
        bail!(
            "no kernel `{}` in the matrix (have: 6.12, 6.1)",
            only.unwrap_or("")
        );
    }
    let test_bin = build_test_binary()?;
    run_cmd(Command::new("cargo").args([
        "build",
        "--package",
        "agent-user",
        "--bin",
        "agentwarden",
    ]))?;
    let log_dir = workspace_root().join("target/vm");
    fs::create_dir_all(&log_dir)?;
    let mut lines = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    let mut all_ok = true;
    for k in kernels {
        let image = vmlinuz(k).ok_or_else(|| {
            anyhow!(
                "kernel {} ({}) is not installed: run `cargo xtask setup`",
                k.label,
                k.package
            )
        })?;
        let started = Instant::now();
        let v = boot_and_test(
            k,
            &image,
            &test_bin,
            filter,
            &log_dir.join(format!("{}.log", k.label)),
        )?;
        passed += v.passed;
        failed += v.failed;
        all_ok &= v.ok;
        lines.push(format!(
            "vm {:<5} {}: {} — {} passed, {} failed; {} ({:.0} s, log target/vm/{}.log)",
            k.label,
            image.file_name().unwrap_or_default().to_string_lossy(),
            if v.ok { "PASS" } else { "FAIL" },
            v.passed,
            v.failed,
            v.why,
            started.elapsed().as_secs_f64(),
            k.label
        ));
    }
    eprintln!();
    for l in &lines {
        eprintln!("{l}");
    }
    if !all_ok && failed == 0 {
        // A kernel failed without a failing test (panic, stall, no report): count it.
        failed = 1;
    }
    println!("vm: {passed} passed, {failed} failed");
    if !all_ok {
        bail!("the VM tier failed");
    }
    Ok(())
}

fn boot_and_test(
    k: &GuestKernel,
    image: &Path,
    test_bin: &Path,
    filter: Option<&str>,
    log: &Path,
) -> Result<Verdict> {
    // Under TCG (no KVM here) a vCPU can run stale code while another live-patches a
    // tracepoint's static branch (text_poke), which ends in an int3 Oops in
    // syscall_trace_enter (seen on 6.12). Every daemon of the tests flips those branches
    // on attach and detach; enabling the same tracepoints once through tracefs for the
    // whole run keeps their reference counts above zero, so they are never re-patched.
    let pin: String = PINNED_EVENTS
        .iter()
        .map(|e| format!("echo 1 > /sys/kernel/tracing/events/{e}/enable; "))
        .collect();
    let mut script = format!(
        "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; {pin}"
    );
    script.push_str(&format!(
        "RUST_BACKTRACE=0 CI=true AGENTWARDEN_EXPECT_LSM=1 AGENTWARDEN_EMULATED=1 {} \
         --test-threads=2 --show-output",
        test_bin.display()
    ));
    if let Some(f) = filter {
        script.push(' ');
        script.push_str(f);
    }
    // The end-to-end test with the real Claude Code (a 400 MB native binary) runs on the
    // host tier: under emulation on one vCPU it would take minutes, and what it proves
    // (the shipped profile with the real agent) needs no kernel feature of the guests.
    script.push_str(" --skip claude_code");
    // Kernel complaints during the run fail the kernel even when every test passed.
    script.push_str(&format!(
        " 2>&1; rc=$?; dmesg 2>/dev/null | grep -E '{}' | sed 's/^/dmesg: /'; echo {EXIT_MARKER}$rc",
        KERNEL_FAILURES.join("|")
    ));
    let mut child = Command::new("vng")
        .args([
            "--disable-kvm",
            // One vCPU: under TCG a second vCPU can run stale code while the kernel
            // live-patches text (tracepoint static branches, BPF trampolines), which
            // ended in an int3 Oops in syscall_trace_enter on 6.12; a real CPU cannot.
            "--cpus",
            "1",
            "--memory",
            "2G",
            "--user",
            "root",
        ])
        .arg("--run")
        .arg(image)
        .args(["--append", LSM_APPEND, "--", "sh", "-c", &script])
        .current_dir(workspace_root())
        // Own process group, so a stalled guest is killed with QEMU, not just vng.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vng (virtme-ng): run `cargo xtask setup`")?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut file = fs::File::create(log)?;
    let deadline = Instant::now() + PER_KERNEL_TIMEOUT;
    let mut v = Verdict {
        passed: 0,
        failed: 0,
        ok: false,
        why: String::new(),
    };
    let (mut exit, mut kernel_failure) = (None, None);
    let mut proven = vec![false; LSM_PROOFS.len()];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("[{}] {line}", k.label);
                writeln!(file, "{line}")?;
                if let Some(code) = line.trim().strip_prefix(EXIT_MARKER) {
                    exit = code.parse::<i32>().ok();
                }
                for (i, (_, marker)) in LSM_PROOFS.iter().enumerate() {
                    proven[i] |= line.contains(marker);
                }
                if let Some(rest) = line.strip_prefix("test result: ") {
                    let (p, f) = parse_counts(rest);
                    v.passed += p;
                    v.failed += f;
                }
                if kernel_failure.is_none() && KERNEL_FAILURES.iter().any(|p| line.contains(p)) {
                    kernel_failure = Some(line.clone());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_group(child.id());
                let _ = child.wait();
                v.why = format!(
                    "guest stalled: no result within {} s",
                    PER_KERNEL_TIMEOUT.as_secs()
                );
                return Ok(v);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    v.ok = true;
    let mut why = Vec::new();
    match exit {
        Some(0) => {}
        Some(c) => {
            v.ok = false;
            why.push(format!("tests exited {c}"));
        }
        None => {
            v.ok = false;
            why.push(format!("guest never reported (vng {status})"));
        }
    }
    if let Some(l) = kernel_failure {
        v.ok = false;
        why.push(format!("kernel reported: {l}"));
    }
    let mut proof = false;
    for (i, (test, marker)) in LSM_PROOFS.iter().enumerate() {
        if filter.is_none_or(|f| test.contains(f)) {
            if proven[i] {
                proof = true;
            } else {
                v.ok = false;
                why.push(format!("no proof line `{}` from {test}", marker.trim()));
            }
        }
    }
    if v.passed == 0 && v.ok {
        v.ok = false;
        why.push("no test ran".into());
    }
    v.why = if why.is_empty() {
        if proof {
            "bpf-lsm deny effective".into()
        } else {
            "ok".into()
        }
    } else {
        why.join("; ")
    };
    Ok(v)
}

/// SIGKILL to the process group led by `pid` (vng and the QEMU it started).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
}

/// `ok. 11 passed; 0 failed; ...` → (11, 0).
fn parse_counts(s: &str) -> (u32, u32) {
    let num = |key: &str| {
        s.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(key)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (num(" passed"), num(" failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_libtest_summary() {
        assert_eq!(
            super::parse_counts("ok. 11 passed; 0 failed; 0 ignored; 0 measured"),
            (11, 0)
        );
        assert_eq!(
            super::parse_counts("FAILED. 9 passed; 2 failed; 0 ignored"),
            (9, 2)
        );
    }
}
