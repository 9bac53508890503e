//! The VM tier: the kernel test binary, built on the host, run inside QEMU on Debian's
//! distribution kernels booted with `lsm=...,bpf`, so the BPF-LSM layer is proven on the
//! kernels users run (these machines' own kernel cannot load BPF-LSM programs).
//!
//! virtme-ng boots each kernel with the host's filesystem read-only (writes go to a
//! tmpfs overlay), so the guest runs the very binaries the host built.
//!
//! Only the tests that need the guests' kernels run here ([`VM_TESTS`], each with its
//! reason); the host tier runs them all. Under TCG (no KVM on these machines) a guest
//! runs process-heavy work some 50-80x slower than the host, so the guests run the
//! release daemon (its start-up is ~5x shorter than a debug build's there), both kernels
//! boot side by side (one vCPU each), and every deadline of the tests is stretched by
//! a factor each guest measures at boot against the host (`awload calibrate`).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{guard, run_cmd, workspace_root};

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
/// One kernel's boot and test run at the most. A guest that goes on printing results
/// is not stalled: on a slower or busier host the same tests take longer (one CI run of
/// this tier took 841 s, one on a slower host passed 52 of 58 tests by 1 500 s), so
/// the bound that catches a stall is [`SILENCE_TIMEOUT`]; this one keeps the whole run
/// under CI's 90 minutes.
const PER_KERNEL_TIMEOUT: Duration = Duration::from_secs(2700);
/// No line from the guest for this long: it is stalled (libtest says when a test runs
/// past 60 s, and no test runs for longer than this in the guests).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(600);
/// The kernel tests that run in the guests, and why each needs the guests' kernels. A
/// name that no longer exists fails the tier (a rename must not drop coverage silently).
pub const VM_TESTS: &[(&str, &str)] = &[
    (
        "selectors::a_program_a_selector_names_is_enrolled_before_its_first_instruction",
        "enrolment at exec on each kernel's verifier (the exec program is required), and the refusal in a selector's session by BPF-LSM",
    ),
    (
        "control::a_monitored_session_is_still_refused_the_daemons_own_directories",
        "BPF-LSM file_open refuses the daemon's self-protection rules in monitor mode (and leaves the profile's rules to the tracepoints)",
    ),
    (
        "control::a_session_cannot_open_the_daemons_own_directories",
        "the BPF-LSM path hooks (unlink, rename, link, truncate, mkdir, mknod, symlink) refuse changes to the daemon's names",
    ),
    (
        "syscalls::attached_sessions_cannot_signal_trace_or_bpf_the_daemon_where_bpf_lsm_runs",
        "the BPF-LSM self-protection hooks (task_kill, ptrace_access_check, bpf) refuse inside the call",
    ),
    (
        "syscalls::denied_syscalls_fail_with_eperm_under_run_and_are_recorded_with_their_rule",
        "seccomp refusals recorded by the raw sys_exit program (BTF arguments, pt_regs) on each kernel",
    ),
    (
        "succession::a_killed_daemon_leaves_enforcement_in_force_and_its_successor_adopts_the_session",
        "pinned BPF-LSM, tp_btf, tracepoint and cgroup links on each kernel: the LSM refusal holds with no daemon, and a successor adopts",
    ),
    (
        "control::status_reports_programs_and_counters_and_sigterm_stops_cleanly",
        "every program, the BPF-LSM ones included, passes each kernel's verifier and attaches",
    ),
    (
        "sessions::exec_open_and_connect_carry_session_and_resolved_paths",
        "struct offsets from each kernel's BTF: the dentry walk, cwd and argv reads",
    ),
    (
        "sessions::double_fork_and_setsid_stay_in_session_until_the_last_exit",
        "tp_btf sched_process_fork/exit arguments on each kernel",
    ),
    (
        "sessions::exit_code_and_fatal_signal_are_reported",
        "task_struct exit_code and signal layout",
    ),
    (
        "sessions::openat2_opens_are_observed_and_resolved",
        "the openat2 tracepoints of each kernel",
    ),
    (
        "paths::lockdown_exec_is_denied_by_bpf_lsm_or_refused_without_it",
        "BPF-LSM bprm_check_security refuses (EPERM)",
    ),
    (
        "paths::denied_opens_and_execs_are_blocked_with_eperm_by_bpf_lsm_or_refused_without_it",
        "BPF-LSM file_open and bprm_check_security refuse on the resolved path and inode",
    ),
    (
        "paths::denied_files_and_programs_are_killed_before_returning_to_user_mode",
        "kill where BPF-LSM runs: the LSM refusal plus SIGKILL",
    ),
    (
        "paths::a_renamed_denied_program_stays_denied_after_the_rules_are_bound_again",
        "inode bindings judged in bprm_check_security",
    ),
    (
        "approvals::a_held_read_is_approved_or_denied_by_a_person_outside_the_session",
        "where BPF-LSM runs, its file_open hook leaves `ask` rules to the held fanotify event (an LSM refusal would come first)",
    ),
    (
        "repeats::repeated_allowed_opens_are_counted_in_the_kernel_and_every_one_is_in_the_trail",
        "the counting of repeated opens on each kernel's verifier (atomic add, for_each_map_elem), and its perf-event timer",
    ),
    (
        "repeats::a_counted_file_under_another_name_or_changed_rules_is_judged_again",
        "BPF-LSM file_open's shortcut for counted repeats judges again under changed rules and another name",
    ),
    (
        "paths::exec_and_file_rules_are_judged_and_recorded_as_alerts",
        "path rules judged in the kernel beside the LSM hooks, which leave monitor and alert to the tracepoints",
    ),
    (
        "network::network_rules_block_in_the_kernel_and_monitor_only_records",
        "cgroup sock_addr programs (connect4/6, sendmsg4/6) on each kernel",
    ),
    (
        "network::raw_and_icmp_sockets_are_refused_at_creation",
        "cgroup/sock_create on each kernel, and the signal at socket(2)'s exit",
    ),
    (
        "network::network_kill_refuses_and_kills_before_return",
        "cgroup refusal plus the signal at the syscall's exit",
    ),
    (
        "landlock::default_deny_files_are_fenced_by_landlock_in_run_sessions",
        "each kernel's Landlock ABI (6.1 has ABI 2, 6.12 ABI 6)",
    ),
    (
        "routes::file_routes_without_an_open_by_path_are_refused",
        "io_uring, file handles, /proc re-opens, mount namespaces: BPF-LSM file_open (6.12) \
         and the fanotify marks (6.1) on each kernel's open paths",
    ),
    (
        "routes::descriptors_held_before_enrolment_cannot_be_read",
        "fanotify access permission events on read, sendfile, splice, copy_file_range and \
         io_uring reads: each kernel decides differently when a file asks (6.17+ at open)",
    ),
    (
        "routes::program_routes_are_refused",
        "exec permission events and digests on each kernel; fileless execs refused by \
         BPF-LSM (inode link count offset from BTF)",
    ),
    (
        "routes::io_uring_connects_and_sends_are_judged_by_destination",
        "the cgroup hooks on each kernel's io_uring connect and sendmsg paths",
    ),
    (
        "routes::packet_sockets_are_stopped_at_creation",
        "BPF-LSM socket_create refusing the syscall and io_uring alike on each kernel",
    ),
    (
        "routes::name_patterns_are_refused_for_the_files_where_the_session_works",
        "name patterns refused by BPF-LSM file_open (6.12) or, for the files bound where \
         the session works, by fanotify (6.1), the rest killed by the fallback",
    ),
];
/// Printed by the guest after the tests; a guest that never prints it did not report.
const EXIT_MARKER: &str = "AGENTWARDEN_VM_EXIT=";
/// Lines the LSM tests print when their refusals took effect, by test: a guest whose
/// BPF-LSM layer silently did nothing fails even if a test was somehow skipped.
const LSM_PROOFS: &[(&str, &str)] = &[
    (
        "paths::lockdown_exec_is_denied_by_bpf_lsm_or_refused_without_it",
        "bpf-lsm deny took effect on ",
    ),
    (
        "paths::denied_opens_and_execs_are_blocked_with_eperm_by_bpf_lsm_or_refused_without_it",
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
pub struct Verdict {
    pub label: &'static str,
    pub passed: u32,
    pub failed: u32,
    pub ok: bool,
    pub why: String,
    /// The guest's slow-down against the host, as it measured at boot.
    pub time_scale: Option<String>,
    pub secs: f64,
}

impl Verdict {
    /// A kernel's verdict before anything was seen: failed, nothing counted.
    fn pending(label: &'static str) -> Self {
        Self {
            label,
            passed: 0,
            failed: 0,
            ok: false,
            why: String::new(),
            time_scale: None,
            secs: 0.0,
        }
    }
}

/// What the guests run: the kernel test binary (built on the host), the release daemon
/// and `awload`, and the host's calibration figures.
struct GuestRun {
    test_bin: PathBuf,
    agentwarden: PathBuf,
    awload: PathBuf,
    host_calibration: String,
    tests: Vec<&'static str>,
}

/// Runs the VM tier; `only` picks kernels by label, `filter` selects tests (of
/// [`VM_TESTS`]). Returns one verdict per kernel (also when one failed).
pub fn run(only: Option<&str>, filter: Option<&str>) -> Result<Vec<Verdict>> {
    let kernels: Vec<&'static GuestKernel> = MATRIX
        .iter()
        .filter(|k| only.is_none_or(|o| o == k.label))
        .collect();
    if kernels.is_empty() {
        bail!(
            "no kernel `{}` in the matrix (have: 6.12, 6.1)",
            only.unwrap_or("")
        );
    }
    let tests: Vec<&'static str> = VM_TESTS
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| filter.is_none_or(|f| t.contains(f)))
        .collect();
    if tests.is_empty() {
        eprintln!(
            "vm: no test of the VM tier matches `{}`; nothing to run in the guests",
            filter.unwrap_or("")
        );
        return Ok(Vec::new());
    }
    let test_bin = build_test_binary()?;
    check_vm_tests_exist(&test_bin)?;
    run_cmd(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "agent-user",
        "--bin",
        "agentwarden",
        "--package",
        "bench",
        "--bin",
        "awload",
        // The escape probes the route tests run, beside the daemon they find them by.
        "--package",
        "awprobe",
        "--bin",
        "awprobe",
    ]))?;
    let root = workspace_root();
    let awload = root.join("target/release/awload");
    let out = Command::new(&awload)
        .arg("calibrate")
        .output()
        .context("awload calibrate")?;
    if !out.status.success() {
        bail!(
            "awload calibrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let host_calibration = String::from_utf8(out.stdout)?.trim().to_owned();
    eprintln!("vm: host calibration {host_calibration}");
    let guest = GuestRun {
        test_bin,
        agentwarden: root.join("target/release/agentwarden"),
        awload,
        host_calibration,
        tests,
    };
    let log_dir = root.join("target/vm");
    fs::create_dir_all(&log_dir)?;
    let mut images = Vec::new();
    for k in &kernels {
        let image = vmlinuz(k).ok_or_else(|| {
            anyhow!(
                "kernel {} ({}) is not installed: run `cargo xtask setup`",
                k.label,
                k.package
            )
        })?;
        images.push((*k, image));
    }
    // The kernels boot side by side: each guest is one emulated CPU (one host thread),
    // and these machines have two cores.
    let verdicts: Vec<Verdict> = thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .map(|(k, image)| {
                let log = log_dir.join(format!("{}.log", k.label));
                let guest = &guest;
                scope.spawn(move || {
                    let started = Instant::now();
                    let mut v = boot_and_test(k, image, guest, &log).unwrap_or_else(|e| Verdict {
                        why: format!("{e:#}"),
                        ..Verdict::pending(k.label)
                    });
                    v.secs = started.elapsed().as_secs_f64();
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("guest thread"))
            .collect()
    });
    eprintln!();
    let (mut passed, mut failed) = (0, 0);
    for ((k, image), v) in images.iter().zip(&verdicts) {
        passed += v.passed;
        failed += v.failed;
        eprintln!(
            "vm {:<5} {}: {} — {} passed, {} failed; {} (time scale {}, {:.0} s, log target/vm/{}.log)",
            k.label,
            image.file_name().unwrap_or_default().to_string_lossy(),
            if v.ok { "PASS" } else { "FAIL" },
            v.passed,
            v.failed,
            v.why,
            v.time_scale.as_deref().unwrap_or("?"),
            v.secs,
            k.label
        );
    }
    let all_ok = verdicts.iter().all(|v| v.ok);
    if !all_ok && failed == 0 {
        // A kernel failed without a failing test (panic, stall, no report): count it.
        failed = 1;
    }
    println!("vm: {passed} passed, {failed} failed");
    Ok(verdicts)
}

/// Every name of [`VM_TESTS`] is a test of the binary.
fn check_vm_tests_exist(test_bin: &Path) -> Result<()> {
    let out = Command::new(test_bin)
        .args(["--list", "--format", "terse"])
        .output()
        .context("listing the kernel tests")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    let missing: Vec<&str> = VM_TESTS
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| !names.contains(t))
        .collect();
    if !missing.is_empty() {
        bail!("VM_TESTS names tests that do not exist: {missing:?}");
    }
    Ok(())
}

/// The shell script the guest runs: pin tracepoints, calibrate, run the tests, report.
fn guest_script(guest: &GuestRun) -> String {
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
        "scale=$({} calibrate --against '{}') || scale=1; echo {SCALE_MARKER}$scale; ",
        guest.awload.display(),
        guest.host_calibration
    ));
    script.push_str(&format!(
        "RUST_BACKTRACE=0 CI=true AGENTWARDEN_EXPECT_LSM=1 AGENTWARDEN_EMULATED=1 \
         AGENTWARDEN_TIME_SCALE=$scale AGENTWARDEN_BIN={} {} \
         --test-threads=2 --show-output --exact {}",
        guest.agentwarden.display(),
        guest.test_bin.display(),
        guest.tests.join(" ")
    ));
    // Kernel complaints during the run fail the kernel even when every test passed.
    script.push_str(&format!(
        " 2>&1; rc=$?; dmesg 2>/dev/null | grep -E '{}' | sed 's/^/dmesg: /'; echo {EXIT_MARKER}$rc",
        KERNEL_FAILURES.join("|")
    ));
    script
}

/// Printed by the guest before the tests: its slow-down factor against the host.
const SCALE_MARKER: &str = "AGENTWARDEN_VM_TIME_SCALE=";

fn boot_and_test(
    k: &'static GuestKernel,
    image: &Path,
    guest: &GuestRun,
    log: &Path,
) -> Result<Verdict> {
    // The script goes to a file the guest reads through the shared root: virtme-ng hands
    // an inline script over on the kernel command line, whose 2 KiB limit it outgrew.
    let script_path = log.with_extension("sh");
    fs::write(&script_path, guest_script(guest))?;
    let mut vng = Command::new("vng");
    vng.args([
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
    .args(["--append", LSM_APPEND, "--", "sh"])
    .arg(&script_path);
    let mut child = guard::spawn(&vng)?;
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
    let mut v = Verdict::pending(k.label);
    let (mut exit, mut kernel_failure) = (None, None);
    let mut proven = vec![false; LSM_PROOFS.len()];
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(SILENCE_TIMEOUT);
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("[{}] {line}", k.label);
                writeln!(file, "{line}")?;
                if let Some(code) = line.trim().strip_prefix(EXIT_MARKER) {
                    exit = code.parse::<i32>().ok();
                }
                if let Some(scale) = line.trim().strip_prefix(SCALE_MARKER) {
                    v.time_scale = Some(scale.to_owned());
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
                guard::kill_group(child.id());
                let _ = child.wait();
                v.why = if Instant::now() >= deadline {
                    format!(
                        "guest stalled: no result within {} s",
                        PER_KERNEL_TIMEOUT.as_secs()
                    )
                } else {
                    format!(
                        "guest stalled: no output for {} s",
                        SILENCE_TIMEOUT.as_secs()
                    )
                };
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
        if guest.tests.contains(test) {
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

/// A terminated `cargo xtask test --vm` leaves no QEMU behind: starts one (on the kernel
/// that boots first in the matrix's order), waits until its QEMU runs, ends it with
/// SIGTERM (as `timeout` and CI limits do) and then with SIGKILL, and checks that no
/// process of its tree survives either.
pub fn orphan_check() -> Result<()> {
    let exe = std::env::current_exe().context("xtask's own path")?;
    let log_dir = workspace_root().join("target/vm");
    fs::create_dir_all(&log_dir)?;
    for (signal, name) in [
        (rustix::process::Signal::TERM, "SIGTERM"),
        (rustix::process::Signal::KILL, "SIGKILL"),
    ] {
        let tag = format!("orphan-check-{}-{name}", std::process::id());
        let log = fs::File::create(log_dir.join("orphan-check.log"))?;
        let mut child = Command::new(&exe)
            .args(["test", "--vm", "--kernel", MATRIX[0].label, "lockdown"])
            .env(guard::TAG_VAR, &tag)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting xtask test --vm")?;
        let qemu_running = || {
            guard::tagged(&tag).into_iter().any(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with("qemu-system"))
            })
        };
        if !guard::wait_until(Duration::from_secs(300), qemu_running) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("orphan check: QEMU never started (see target/vm/orphan-check.log)");
        }
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, signal);
        let status = child.wait()?;
        let gone = guard::wait_until(Duration::from_secs(15), || guard::tagged(&tag).is_empty());
        let left = guard::tagged(&tag);
        for pid in &left {
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        if !gone {
            bail!(
                "orphan check: after {name} to `xtask test --vm` ({status}), processes {left:?} of its guest still ran"
            );
        }
        eprintln!(
            "vm: orphan check: {name} to `xtask test --vm` while QEMU ran left no process behind"
        );
    }
    Ok(())
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
