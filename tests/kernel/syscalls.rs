//! Syscall profiles and the daemon's self-protection: the seccomp filter of `run`
//! sessions (`EPERM`, recorded at the refused call's exit with its rule and `seccomp`),
//! and the syscall-entry program for attached sessions (SIGKILL or a record).

use crate::support::*;

/// A profile denying `@mount`, `@ns`, `@module` and `@io-uring` with `on_violation`.
fn syscall_profile(rules: &Path, name: &str, mode: &str, on_violation: &str) {
    let text = format!(
        "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
         syscalls:\n  deny: [\"@mount\", \"@ns\", \"@module\", \"@io-uring\"]\n  \
         on_violation: {on_violation}\n"
    );
    fs::write(rules.join(format!("{name}.yaml")), text).unwrap();
}

/// The syscall decisions of a session, once `n` are there.
fn syscall_events(d: &Daemon, session: &str, n: usize) -> Vec<Event> {
    let evs = d.wait_for(session, "the syscall decisions", |evs| {
        evs.iter().filter(|e| e.syscall().is_some()).count() >= n
    });
    evs.into_iter().filter(|e| e.syscall().is_some()).collect()
}

/// Runs each probe call `(label, args)` in one `run` session of `profile` and returns
/// what each said (`label=ok` or `label=errno N`, a line each), after checking that the
/// session itself ended well.
fn probe_in_run(d: &Daemon, profile: &str, name: &str, calls: &[(&str, String)]) -> String {
    let script: Vec<String> = calls
        .iter()
        .map(|(label, args)| format!("echo \"{label}=$({} {args})\"", probe()))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let out = d.run_profile(
        profile,
        name,
        work.path(),
        &["/bin/sh", "-c", &script.join("; ")],
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every line of `want` is a line of `said`.
fn assert_said(said: &str, want: &[&str]) {
    for w in want {
        assert!(said.lines().any(|l| l == *w), "want {w} in:\n{said}");
    }
}

/// `(action, layer, rule)` of the decision on syscall `name`.
fn decision_on(evs: &[Event], name: &str) -> (Action, Layer, String) {
    let e = evs
        .iter()
        .find(|e| e.syscall().is_some_and(|s| s.name == name))
        .unwrap_or_else(|| panic!("no decision on {name}:\n{}", dump(evs)));
    let d = e.decision.as_ref().expect("decision");
    assert_eq!(d.decision, Verdict::Deny);
    (d.action, d.enforced_by, d.rule.clone())
}

/// `mount`, `unshare`, clone with `CLONE_NEWUTS`, `init_module` and `io_uring_setup`
/// fail with `EPERM` under `run` (the filter `run` installed before it executed the
/// agent), while threads still start (clone3 is refused as absent, libc falls back to
/// clone, whose flags the filter judges); each refusal is an event and an audit row with
/// its rule (`file:line (syscalls.deny[i])`) and layer `seccomp`. Outside the session
/// the same calls succeed.
#[test]
fn denied_syscalls_fail_with_eperm_under_run_and_are_recorded_with_their_rule() {
    let rules = tempfile::tempdir().unwrap();
    syscall_profile(rules.path(), "nosys", "enforce", "block");
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let calls: Vec<(&str, String)> = [
        ("mount", format!("mount {}", mnt.display())),
        ("unshare", "unshare".to_owned()),
        ("clone-ns", "clone-ns".to_owned()),
        ("init-module", "init-module".to_owned()),
        ("io-uring-setup", "io-uring-setup".to_owned()),
        ("thread", "thread".to_owned()),
    ]
    .into();
    let said = probe_in_run(&d, "nosys", "nosys-run", &calls);
    assert_said(
        &said,
        &[
            "mount=errno 1",
            "unshare=errno 1",
            "clone-ns=errno 1",
            "init-module=errno 1",
            "io-uring-setup=errno 1",
            "thread=ok",
        ],
    );
    let sid = d.session("nosys-run").id;
    let evs = syscall_events(&d, &sid, 5);
    let file = rules.path().join("nosys.yaml");
    for (name, index) in [
        ("mount", 0),
        ("unshare", 1),
        ("clone", 1),
        ("init_module", 2),
        ("io_uring_setup", 3),
    ] {
        let (action, layer, rule) = decision_on(&evs, name);
        assert_eq!(
            (action, layer, rule.as_str()),
            (
                Action::Blocked,
                Layer::Seccomp,
                format!("{}:6 (syscalls.deny[{index}])", file.display()).as_str()
            ),
            "{name}"
        );
    }
    let mount = evs
        .iter()
        .find_map(|e| e.syscall().filter(|s| s.name == "mount"))
        .unwrap();
    assert_eq!(
        (mount.nr, mount.at.as_str(), mount.result),
        (165, "exit", -1)
    );
    let clone = evs
        .iter()
        .find_map(|e| e.syscall().filter(|s| s.name == "clone"))
        .unwrap();
    assert_eq!(
        clone.arg,
        Some(libc::CLONE_NEWUTS as i64 | libc::SIGCHLD as i64)
    );
    assert!(
        !evs.iter()
            .any(|e| e.syscall().is_some_and(|s| s.name == "clone3")),
        "clone3's ENOSYS is not a refusal to record:\n{}",
        dump(&evs)
    );
    let rows = d.audit_session(&sid);
    let row = rows
        .iter()
        .find(|r| r["kind"] == "syscall_decision" && r["syscall"]["name"] == "init_module")
        .unwrap_or_else(|| panic!("no audit row for init_module: {rows:?}"));
    assert_eq!(row["decision"]["action"], "blocked");
    assert_eq!(row["decision"]["enforced_by"], "seccomp");
    assert_eq!(
        row["decision"]["rule"],
        format!("{}:6 (syscalls.deny[2])", file.display())
    );
    // The filter is the session's: the same calls outside it are the kernel's to allow.
    let outside = Command::new(probe())
        .args(["mount", mnt.to_str().unwrap()])
        .output_within();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "ok");
}

/// `on_violation: kill` in a `run` session: refused by seccomp, then SIGKILL at the
/// refused call's exit (recorded `killed` by `seccomp`).
#[test]
fn a_kill_profile_refuses_and_kills_under_run() {
    let rules = tempfile::tempdir().unwrap();
    syscall_profile(rules.path(), "killsys", "enforce", "kill");
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let out = d.run_profile("killsys", "killsys-run", work.path(), &[probe(), "unshare"]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "nothing printed after the call: {out:?}"
    );
    let sid = d.session("killsys-run").id;
    let evs = syscall_events(&d, &sid, 1);
    let (action, layer, _) = decision_on(&evs, "unshare");
    assert_eq!((action, layer), (Action::Killed, Layer::Seccomp));
}

/// Enrols `cmd` (which waits for `gate` first) with `attach`, opens the gate and returns
/// its exit status.
fn attach_and_release(d: &Daemon, profile: &str, name: &str, cmd: &str) -> ExitStatus {
    let work = tempfile::tempdir().unwrap();
    let gate = work.path().join("gate");
    let script = format!(
        "while [ ! -e {g} ]; do sleep 0.05; done; exec {cmd}",
        g = gate.display()
    );
    let mut child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let out = d
        .cli()
        .args([
            "attach",
            "--pid",
            &child.id().to_string(),
            "--profile",
            profile,
            "--session-name",
            name,
        ])
        .output_within();
    assert!(out.status.success(), "{out:?}");
    fs::write(&gate, "").unwrap();
    child.wait().unwrap()
}

/// Attached sessions have no seccomp filter: the syscall-entry program kills
/// (`on_violation: kill`, SIGKILL at entry, recorded `killed` by `signal`) or records
/// (`alert`: the call runs, recorded `alerted`); the daemon's self-protection kills at
/// entry. A `block` profile without a fallback is refused at attach, naming why.
#[test]
fn attached_sessions_are_killed_or_alerted_at_the_syscalls_entry() {
    let rules = tempfile::tempdir().unwrap();
    syscall_profile(rules.path(), "attkill", "enforce", "kill");
    syscall_profile(rules.path(), "attalert", "enforce", "alert");
    syscall_profile(rules.path(), "attblock", "enforce", "block");
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let killed = attach_and_release(&d, "attkill", "att-kill", &format!("{} unshare", probe()));
    assert_eq!(killed.signal(), Some(9), "{killed:?}");
    let sid = d.session("att-kill").id;
    let evs = syscall_events(&d, &sid, 1);
    let (action, layer, rule) = decision_on(&evs, "unshare");
    assert_eq!((action, layer), (Action::Killed, Layer::Signal));
    assert!(
        rule.ends_with("attkill.yaml:6 (syscalls.deny[1])"),
        "{rule}"
    );
    let at = evs.iter().find_map(|e| e.syscall()).unwrap();
    assert_eq!(at.at, "entry");
    let rows = d.audit_session(&sid);
    assert!(
        rows.iter().any(|r| r["kind"] == "syscall_decision"
            && r["syscall"]["name"] == "unshare"
            && r["decision"]["action"] == "killed"
            && r["decision"]["enforced_by"] == "signal"),
        "{rows:?}"
    );

    let alerted = attach_and_release(
        &d,
        "attalert",
        "att-alert",
        &format!("{} io-uring-setup", probe()),
    );
    assert!(alerted.success(), "{alerted:?}");
    let sid = d.session("att-alert").id;
    let evs = syscall_events(&d, &sid, 1);
    let (action, layer, _) = decision_on(&evs, "io_uring_setup");
    assert_eq!((action, layer), (Action::Alerted, Layer::None));

    // `mount` and `init_module` alike: SIGKILL at entry, recorded with the profile's
    // rule (the call itself runs: the test takes the mount down again).
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    for (label, cmd, name) in [
        (
            "att-mount",
            format!("{} mount {}", probe(), mnt.display()),
            "mount",
        ),
        (
            "att-module",
            format!("{} init-module", probe()),
            "init_module",
        ),
    ] {
        let status = attach_and_release(&d, "attkill", label, &cmd);
        if name == "mount" {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        assert_eq!(status.signal(), Some(9), "{label}: {status:?}");
        let sid = d.session(label).id;
        let evs = syscall_events(&d, &sid, 1);
        let (action, layer, rule) = decision_on(&evs, name);
        assert_eq!((action, layer), (Action::Killed, Layer::Signal), "{label}");
        assert!(rule.contains("attkill.yaml:6 (syscalls.deny["), "{rule}");
    }

    // The daemon's self-protection in an attached session of an enforcing profile
    // (whatever its own `on_violation`): SIGKILL at `bpf()`'s entry, so the descriptor it
    // returns never reaches user mode.
    let bpf = attach_and_release(&d, "attalert", "att-bpf", &format!("{} bpf", probe()));
    assert_eq!(bpf.signal(), Some(9), "{bpf:?}");
    let sid = d.session("att-bpf").id;
    let evs = syscall_events(&d, &sid, 1);
    let (action, layer, rule) = decision_on(&evs, "bpf");
    assert_eq!(
        (action, layer, rule.as_str()),
        (
            Action::Killed,
            Layer::Signal,
            "agentwarden self-protection: bpf()"
        )
    );

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = d
        .cli()
        .args([
            "attach",
            "--pid",
            &sleeper.id().to_string(),
            "--profile",
            "attblock",
        ])
        .output_within();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syscalls.fallback"), "{err}");
}

/// A root process in a `run` session (under `demo`, a monitor profile: self-protection is
/// in every profile) cannot kill or stop the daemon (by pid, by its process group or
/// `-1`), ptrace it, open a pidfd of it, signal it through a `/proc` descriptor
/// (`ENOSYS`), or call `bpf()`; the daemon lives on, and each refusal is recorded with
/// the self-protection rule and `seccomp`.
#[test]
fn a_root_session_cannot_signal_trace_or_bpf_the_daemon() {
    let Some(d) = Daemon::start() else { return };
    let daemon = d.child.as_ref().unwrap().id().to_string();
    // From procfs: the group may be 0 (a harness under a pid 1 that never called setsid).
    let pgid = procfs::process::Process::new(daemon.parse().unwrap())
        .unwrap()
        .stat()
        .unwrap()
        .pgrp;
    let minus_pgid = format!("-{pgid}");
    let calls: Vec<(&str, String)> = [
        ("kill9", format!("kill {daemon} 9")),
        ("stop", format!("kill {daemon} 19")),
        ("group", format!("kill {minus_pgid} 0")),
        ("all", "kill -1 0".to_owned()),
        ("ptrace", format!("ptrace {daemon}")),
        ("pidfd", format!("pidfd-open {daemon}")),
        ("procfd", format!("proc-pidfd-signal {daemon}")),
        ("bpf", "bpf".to_owned()),
        ("perf", "perf-event-open".to_owned()),
        ("module", "init-module".to_owned()),
        // Not aimed at the daemon: let through.
        ("self", "kill 0 0".to_owned()),
    ]
    .into();
    let said = probe_in_run(&d, "demo", "selfprot", &calls);
    // The test runs daemon and session in one session id, so `kill(0)` is refused too
    // (the session could join the daemon's process group); `self` checks a pid that
    // names no daemon: the session's own pid.
    assert_said(
        &said,
        &[
            "kill9=errno 1",
            "stop=errno 1",
            "group=errno 1",
            "all=errno 1",
            "ptrace=errno 1",
            "pidfd=errno 1",
            "procfd=errno 38",
            "bpf=errno 1",
            "perf=errno 1",
            "module=errno 1",
            "self=errno 1",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let own = d.run_in(
        "selfprot-own",
        work.path(),
        &["/bin/sh", "-c", &format!("{} kill $$ 0", probe())],
    );
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "ok", "{own:?}");
    // Alive and answering.
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.daemon_pid.to_string(), daemon);
    let sid = d.session("selfprot").id;
    let evs = syscall_events(&d, &sid, 9);
    let signals: Vec<&Event> = evs
        .iter()
        .filter(|e| e.syscall().is_some_and(|s| s.name == "kill"))
        .collect();
    assert!(signals.len() >= 4, "{}", dump(&evs));
    for e in &signals {
        let dec = e.decision.as_ref().unwrap();
        assert_eq!(
            (dec.action, dec.enforced_by, dec.rule.as_str()),
            (
                Action::Blocked,
                Layer::Seccomp,
                "agentwarden self-protection: a signal to the daemon"
            )
        );
    }
    let args: BTreeSet<i64> = signals.iter().filter_map(|e| e.syscall()?.arg).collect();
    assert!(
        args.contains(&daemon.parse::<i64>().unwrap())
            && args.contains(&-1)
            && args.contains(&-i64::from(pgid)),
        "{args:?}"
    );
    for (name, rule) in [
        (
            "ptrace",
            "agentwarden self-protection: ptrace of the daemon",
        ),
        (
            "pidfd_open",
            "agentwarden self-protection: a pidfd of the daemon",
        ),
        ("bpf", "agentwarden self-protection: bpf()"),
        (
            "perf_event_open",
            "agentwarden self-protection: perf_event_open()",
        ),
        (
            "init_module",
            "agentwarden self-protection: kernel module loading",
        ),
    ] {
        let (action, layer, r) = decision_on(&evs, name);
        assert_eq!(
            (action, layer, r.as_str()),
            (Action::Blocked, Layer::Seccomp, rule)
        );
    }
    let rows = d.audit_session(&sid);
    assert!(
        rows.iter().any(|r| r["kind"] == "syscall_decision"
            && r["syscall"]["name"] == "bpf"
            && r["decision"]["rule"] == "agentwarden self-protection: bpf()"
            && r["decision"]["enforced_by"] == "seccomp"),
        "{rows:?}"
    );
}

/// The raw syscall programs run for every syscall on the host: the exit program (which
/// records the seccomp filter's refusals) is attached while any session runs, the entry
/// program only while a session without a filter (`attach`) or with rules the filter
/// does not carry runs; both go with the last such session (their pins say which).
#[test]
fn the_syscall_programs_are_attached_only_while_a_session_needs_them() {
    let Some(d) = Daemon::start() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    let generation = st.generation.clone();
    let pin = |name: &str| d.pins().join("links").join(&generation).join(name);
    let state = || (pin("sys_exit").exists(), pin("sys_enter").exists());
    let wait_for = |want: (bool, bool), what: &str| {
        let start = Instant::now();
        while state() != want {
            assert!(
                start.elapsed() < patience(),
                "{what}: (exit, entry) = {:?}\n{}",
                state(),
                d.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(state(), (false, false), "attached with no session");
    for p in ["sys_enter", "sys_exit"] {
        let prog = st.programs.iter().find(|x| x.name == p).expect(p);
        assert_eq!(prog.state, "on demand", "{prog:?}");
    }
    let work = tempfile::tempdir().unwrap();
    let (go, go2) = (work.path().join("go"), work.path().join("go2"));
    let waiting = |gate: &Path| format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    // A `run` session: its filter refuses, the exit program records.
    let mut run = d
        .cli()
        .args([
            "run",
            "--profile",
            "demo",
            "--session-name",
            "ondemand",
            "--",
            "bash",
            "-c",
        ])
        .arg(waiting(&go))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for((true, false), "a run session needs the exit program only");
    // An attached one: the entry program too.
    let mut attached = Command::new("sh")
        .args(["-c", &waiting(&go2)])
        .spawn()
        .unwrap();
    let out = d
        .cli()
        .args([
            "attach",
            "--pid",
            &attached.id().to_string(),
            "--profile",
            "demo",
        ])
        .output_within();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        state(),
        (true, true),
        "attached before the enrolment answered"
    );
    fs::write(&go2, "").unwrap();
    assert!(attached.wait().unwrap().success());
    wait_for(
        (true, false),
        "the entry program goes with the attached session",
    );
    fs::write(&go, "").unwrap();
    assert!(run.wait().unwrap().success());
    wait_for((false, false), "both go with the last session");
}

/// A root process in an attached session (no seccomp filter can be given to it) aims at
/// the daemon. Where BPF-LSM runs, the hooks refuse inside the call: SIGKILL and SIGSTOP
/// to the daemon, `ptrace` of it, `bpf()`, `perf_event_open` and loading a kernel module
/// all fail with `EPERM`, the process lives on,
/// and each refusal is recorded with its self-protection rule and `lsm`. Without
/// BPF-LSM the syscall-entry program kills the process (recorded `signal`), after the
/// call has run: shown with a harmless SIGCONT, and the daemon lives on.
#[test]
fn attached_sessions_cannot_signal_trace_or_bpf_the_daemon_where_bpf_lsm_runs() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("guard.yaml"),
        "name: guard\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let daemon = d.child.as_ref().unwrap().id().to_string();
    // It stalled once in a guest (6.12, then 6.1 under a loaded host): if it does again,
    // what every process waits on is in the log.
    let _watchdog = Watchdog::arm(
        "attached_sessions_cannot_signal_trace_or_bpf_the_daemon",
        // Wall time, not scaled: it takes seconds in a guest, and a guest's whole run
        // gets 25 minutes.
        Duration::from_secs(300),
        &d,
    );
    let lsm = lsm_attached(&d);
    let work = tempfile::tempdir().unwrap();
    // An attached process makes one call and says how it went (the probe prints `ok`
    // or `errno N`) into a file.
    let attempt = |name: &str, args: &[&str]| -> (ExitStatus, String) {
        let out = work.path().join(name);
        let cmd = format!("{} {} > {}", probe(), args.join(" "), out.display());
        let status = attach_and_release(&d, "guard", name, &cmd);
        let said = fs::read_to_string(&out).unwrap_or_default();
        (status, said.trim().to_owned())
    };
    let routes: Vec<(&str, Vec<&str>, &str, &str)> = if lsm {
        vec![
            (
                "sigkill",
                vec!["kill", &daemon, "9"],
                "kill",
                "a signal to the daemon",
            ),
            (
                "sigstop",
                vec!["kill", &daemon, "19"],
                "kill",
                "a signal to the daemon",
            ),
            (
                "trace",
                vec!["ptrace", &daemon],
                "ptrace",
                "ptrace of the daemon",
            ),
            ("load", vec!["bpf"], "bpf", "bpf()"),
            (
                "perf",
                vec!["perf-event-open"],
                "perf_event_open",
                "perf_event_open()",
            ),
            (
                "module",
                vec!["init-module"],
                "init_module",
                "kernel module loading",
            ),
        ]
    } else {
        vec![(
            "sigcont",
            vec!["kill", &daemon, "18"],
            "kill",
            "a signal to the daemon",
        )]
    };
    for (name, args, syscall, what) in routes {
        let (status, said) = attempt(name, &args);
        // A SIGSTOP or a tracer's attach that got through would leave the daemon stopped
        // and every later step waiting on it: fail here, naming it, instead of hanging.
        let state = fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap_or_default();
        let stopped = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('T' | 't')));
        if stopped {
            let _ = Command::new("kill").args(["-CONT", &daemon]).status();
            panic!("{name}: the daemon was stopped ({said}, {status:?})");
        }
        if lsm {
            assert!(status.success(), "{name}: {status:?}\n{}", d.log());
            assert_eq!(said, "errno 1", "{name}");
        } else {
            assert_eq!(status.signal(), Some(9), "{name}: {status:?}");
        }
        let sid = d.session(name).id;
        let evs = syscall_events(&d, &sid, 1);
        let (action, layer, rule) = decision_on(&evs, syscall);
        let want = if lsm {
            (Action::Blocked, Layer::Lsm)
        } else {
            (Action::Killed, Layer::Signal)
        };
        assert_eq!((action, layer), want, "{name}");
        assert_eq!(
            rule,
            format!("agentwarden self-protection: {what}"),
            "{name}"
        );
        let rows = d.audit_session(&sid);
        assert!(
            rows.iter().any(|r| r["kind"] == "syscall_decision"
                && r["decision"]["enforced_by"] == layer.as_str()),
            "{name}: {rows:?}"
        );
    }
    // Alive and answering.
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.daemon_pid.to_string(), daemon);
}

/// `profile lint` refuses unknown syscall names and groups, each located
/// (`file:line:col`, the field, a hint), exit 1; `profile show` lists the resolved
/// syscall set of a shipped profile: each group's calls and the self-protection.
#[test]
fn lint_locates_unknown_syscalls_and_show_lists_the_resolved_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    fs::write(
        &file,
        "name: bad\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         syscalls:\n  deny:\n    - mount\n    - mountt\n    - \"@nope\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["profile", "lint"])
        .arg(&file)
        .output_within();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        err.contains(&format!(
            "{f}:8:7: error: syscalls.deny[1]: unknown syscall `mountt`"
        )) && err.contains("did you mean `mount`?"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:9:7: error: syscalls.deny[2]: unknown syscall group `@nope`"
        )),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["profile", "show", "claude-code"])
        .output_within();
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    let line_after = |what: &str| {
        let mut lines = shown.lines().skip_while(|l| !l.contains(what));
        lines.next();
        lines.next().unwrap_or_default().to_owned()
    };
    assert!(
        line_after("deny   @module").contains("init_module"),
        "{shown}"
    );
    assert!(line_after("deny   @mount").contains("mount,"), "{shown}");
    assert!(
        shown.contains("self-protection (every profile")
            && shown
                .lines()
                .any(|l| l.contains("a signal to the daemon") && l.contains("kill")),
        "{shown}"
    );
}
