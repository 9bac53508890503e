//! The daemon as its operators and its sessions see it: the control socket, status,
//! the live event stream, profile reloads, and refusal to run an agent unwatched.

use crate::support::*;

#[test]
fn run_without_a_daemon_refuses_to_start_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(bin())
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["run", "--profile", "demo", "--", "touch"])
        .arg(&marker)
        .output_within();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the agentwarden daemon"), "{err}");
    assert!(err.contains("not running the agent unwatched"), "{err}");
    assert!(!marker.exists(), "the agent ran unwatched");
}

#[test]
fn a_session_cannot_administer_the_daemon() {
    let Some(d) = Daemon::start() else { return };
    let sock = d.socket();
    let sock = sock.to_str().unwrap();
    let cwd = std::env::temp_dir();
    for inner in [
        vec![bin(), "--socket", sock, "sessions"],
        vec![
            bin(),
            "--socket",
            sock,
            "run",
            "--profile",
            "demo",
            "--",
            "true",
        ],
    ] {
        let mut args = vec!["bash", "-c", "\"$@\"", "inner"];
        args.extend(inner.iter().copied());
        let out = d.run_in("nested", &cwd, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{inner:?} succeeded from inside a session"
        );
        assert!(
            err.contains("a session cannot administer agentwarden"),
            "{err}"
        );
        // Wait for the session to end so the next iteration can reuse the name.
        let sid = d
            .sessions()
            .into_iter()
            .find(|s| s.name == "nested" && s.state == "active");
        if let Some(s) = sid {
            d.wait_for(&s.id, "end", |evs| {
                evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
            });
        }
    }
    let mode = fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be owner-only");
}

#[test]
fn status_reports_programs_and_counters_and_sigterm_stops_cleanly() {
    let Some(mut d) = Daemon::start() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    assert!(st.host.btf && st.host.ringbuf);
    assert!(st.host.cgroup2_mount.is_some());
    for p in [
        "sched_process_fork",
        "sched_process_exec",
        "sched_process_exit",
        "sys_exit_openat",
    ] {
        let prog = st.programs.iter().find(|x| x.name == p).expect(p);
        assert_eq!(prog.state, "attached", "{prog:?}");
        assert!(prog.load_us.is_some_and(|us| us > 0), "{prog:?}");
    }
    // Where the start-up went, phase by phase, ending with the total (and in the log).
    let phases: Vec<&str> = st.startup.iter().map(|p| p.phase.as_str()).collect();
    for want in ["offsets", "programs (verify, attach)", "socket", "total"] {
        assert!(
            phases.contains(&want),
            "no start-up phase {want}: {phases:?}"
        );
    }
    let total = st.startup.last().expect("phases");
    assert_eq!(total.phase, "total");
    let sum: u64 = st.startup[..st.startup.len() - 1]
        .iter()
        .map(|p| p.us)
        .sum();
    assert!(total.us > 0 && total.us >= sum, "{:?}", st.startup);
    assert!(
        d.log().contains("startup="),
        "ready line with phases:\n{}",
        d.log()
    );
    let names: Vec<_> = st.kernel_counters.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"ringbuf_drops") && names.contains(&"session_map_full"));
    assert_eq!(st.kernel_counters[0].per_cpu.len(), num_cpus());
    let pins = d.pins();
    assert!(
        pins.join("maps/SESSIONS").exists(),
        "the kernel side is pinned"
    );
    // The signals it handles are taken by one thread with sigwait: every other thread
    // blocks them (a handler on a thread with a descriptor table of its own, the audit
    // writer's, wrote its wake-up to the wrong file).
    let masks = signal_masks(d.child.as_ref().unwrap().id());
    let handled =
        (1u64 << (libc::SIGTERM - 1)) | (1u64 << (libc::SIGINT - 1)) | (1u64 << (libc::SIGHUP - 1));
    assert!(
        masks.iter().any(|(name, _)| name == "aw-signals"),
        "{masks:?}"
    );
    for name in ["audit-writer", "drift", "tokio-rt-worker", "aw-refusal"] {
        assert!(masks.iter().any(|(n, _)| n == name), "{name}: {masks:?}");
    }
    // The signal thread itself shows them unblocked while it waits in sigwait.
    for (name, blocked) in masks.iter().filter(|(n, _)| n != "aw-signals") {
        assert_eq!(
            blocked & handled,
            handled,
            "thread {name} takes a handled signal: {masks:?}"
        );
    }
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status}\n{}", d.log());
    assert!(!d.socket().exists(), "socket removed on shutdown");
    // `--detach-on-exit` (every test daemon but the succession tests'): nothing stays.
    assert!(!pins.exists(), "--detach-on-exit left pins behind");
}

/// Each thread of process `pid`: its name and its blocked signals (`SigBlk`).
fn signal_masks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let blocked = u64::from_str_radix(&field("SigBlk:"), 16).unwrap_or(0);
        out.push((field("Name:"), blocked));
    }
    out
}

/// A SIGTERM while the daemon starts (loading its programs, compiling the profiles) is
/// acted on once it is ready: it stops as on any SIGTERM, exit 0 with nothing left
/// attached, not by the signal's default action with its pins left behind.
#[test]
fn a_sigterm_during_start_up_stops_the_daemon_cleanly_once_ready() {
    if !is_root() {
        skip("loading eBPF programs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pins = pin_dir(dir.path());
    let log_path = dir.path().join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = daemon_command(dir.path())
        .arg("--detach-on-exit")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Once it has begun loading (its programs are being pinned), well before its socket.
    let start = Instant::now();
    while !pins.exists() {
        assert!(start.elapsed() < patience(), "no pins");
        thread::sleep(Duration::from_millis(5));
    }
    let socket = dir.path().join("ctl.sock");
    let early = !socket.exists();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait_within(&mut child, scaled(Duration::from_secs(60)));
    let log = fs::read_to_string(&log_path).unwrap();
    assert!(early, "the socket was bound before the signal:\n{log}");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("daemon ready"), "{log}");
    assert!(log.contains("shutting down signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!pins.exists(), "pins left behind:\n{log}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn events_follow_streams_new_events_live() {
    let Some(d) = Daemon::start() else { return };
    use std::io::BufRead;
    let mut follow = d
        .cli()
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    thread::sleep(Duration::from_millis(300));
    let out = d.run_in("live", &std::env::temp_dir(), &["true"]);
    assert!(out.status.success());
    let deadline = Instant::now() + patience();
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "session_end") {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("follow got only {kinds:?}"));
        if ev.session.name == "live" {
            kinds.push(ev.kind().as_str().to_owned());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(kinds.first().map(String::as_str), Some("session_start"));
    assert!(kinds.iter().any(|k| k == "exec"), "{kinds:?}");
}

/// A profile file that turns bad is rejected with file, line and field, and the daemon
/// keeps running on the last good version (reload on SIGHUP).
#[test]
fn a_bad_profile_is_rejected_and_the_last_good_version_stays() {
    let rules = tempfile::tempdir().unwrap();
    let good = "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: monitor\n";
    fs::write(rules.path().join("team.yaml"), good).unwrap();
    let dir = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &dir]) else {
        return;
    };
    let cwd = std::env::temp_dir();
    let run = |name: &str, profile: &str| d.run_profile(profile, name, &cwd, &["true"]);
    assert!(run("t1", "team").status.success());

    let bad =
        "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: sometimes\n";
    fs::write(rules.path().join("team.yaml"), bad).unwrap();
    fs::write(
        rules.path().join("other.yaml"),
        "name: other\nmode: enforce\n",
    )
    .unwrap();
    d.reload();
    let log = d.log();
    assert!(
        log.contains("team.yaml:4:7: error: mode: unknown variant `sometimes`"),
        "{log}"
    );
    assert!(
        log.contains("other.yaml:2:1: error: description: missing field `description`"),
        "{log}"
    );
    assert!(
        run("t2", "team").status.success(),
        "last good `team` still in force"
    );
    let out = run("t3", "other");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile `other`"));
}

/// Self-protection: a root process in a session under an enforcing profile cannot open
/// the daemon's state directory (its audit store and event log: read or write, or list
/// it), whatever the profile's own file rules; each refusal is
/// `EPERM` (the fanotify layer, BPF-LSM where it runs), recorded with the daemon's own
/// rule. Where BPF-LSM runs, its path hooks also refuse every change to those names:
/// removing the audit store or a pin, renaming the state directory away, hard-linking
/// or truncating the store, creating a file there (`O_CREAT`), or binding a socket in
/// the socket directory. Outside every session they open as before.
#[test]
fn a_session_cannot_open_the_daemons_own_directories() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("guarded.yaml"),
        "name: guarded\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         files:\n  on_violation: block\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    // What a deployment adds (the unit passes its binary, unit file and socket
    // directory): a file and a directory.
    let extra = tempfile::tempdir().unwrap();
    let extra_dir = fs::canonicalize(extra.path()).unwrap();
    let unit = extra_dir.join("agentwarden.service");
    fs::write(&unit, "[Service]\n").unwrap();
    fs::create_dir(extra_dir.join("run")).unwrap();
    let (unit_arg, run_arg) = (
        unit.to_str().unwrap().to_owned(),
        extra_dir.join("run").to_str().unwrap().to_owned(),
    );
    let Some(d) = Daemon::start_with(&[
        "--rules-dir",
        &rd,
        "--protect",
        &unit_arg,
        "--protect",
        &run_arg,
    ]) else {
        return;
    };
    let state = fs::canonicalize(d.db().parent().unwrap()).unwrap();
    let lsm = lsm_attached(&d);
    // The changes to names only the BPF-LSM path hooks refuse (without them these would
    // remove the store the test reads: tried only where they run).
    let names = if lsm {
        format!(
            "attempt('unlink_db', lambda: os.unlink('{db}'))\n\
             attempt('rename_state', lambda: os.rename('{state}', '{state}.moved'))\n\
             attempt('rename_log', lambda: os.rename('{state}/events.jsonl', '{state}/x'))\n\
             attempt('link_db', lambda: os.link('{db}', '{tmp}/db-link'))\n\
             attempt('truncate_db', lambda: os.truncate('{db}', 0))\n\
             attempt('mkdir_state', lambda: os.mkdir('{state}/d'))\n\
             attempt('symlink_state', lambda: os.symlink('/etc/passwd', '{state}/s'))\n\
             attempt('bind_run', lambda: socket.socket(socket.AF_UNIX).bind('{run}/fake.sock'))\n",
            db = d.db().display(),
            state = state.display(),
            tmp = extra_dir.display(),
            run = run_arg,
        )
    } else {
        String::new()
    };
    let probe = format!(
        "import os, socket\n\
         def attempt(label, f):\n    try:\n        f()\n        print(label + '=ok')\n    \
         except OSError as e:\n        print(label + '=' + str(e.errno))\n\
         attempt('read_db', lambda: open('{db}', 'rb').read(16))\n\
         attempt('write_state', lambda: open('{state}/planted', 'w').write('x'))\n\
         attempt('list_state', lambda: os.listdir('{state}'))\n\
         attempt('read_log', lambda: open('{state}/events.jsonl').read(16))\n\
         attempt('list_pins', lambda: os.listdir('{pins}'))\n\
         attempt('list_links', lambda: os.listdir('{pins}/links'))\n\
         attempt('open_pin', lambda: open('{pins}/maps/SESSIONS', 'rb'))\n\
         attempt('unlink_pin', lambda: os.unlink('{pins}/maps/SESSIONS'))\n\
         attempt('write_unit', lambda: open('{unit}', 'a').write('ExecStart=/bin/false'))\n\
         attempt('read_unit', lambda: open('{unit}').read())\n\
         attempt('list_run', lambda: os.listdir('{run}'))\n{names}",
        db = d.db().display(),
        state = state.display(),
        pins = d.pins().display(),
        unit = unit.display(),
        run = run_arg,
    );
    let cwd = std::env::temp_dir();
    let out = d.run_profile("guarded", "self", &cwd, &["/usr/bin/python3", "-c", &probe]);
    assert!(out.status.success(), "{out:?}");
    let (unlink_pin, name_changes) = if lsm {
        (
            "1",
            "unlink_db=1\nrename_state=1\nrename_log=1\nlink_db=1\ntruncate_db=1\n\
             mkdir_state=1\nsymlink_state=1\nbind_run=1\n",
        )
    } else {
        ("ok", "")
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "read_db=1\nwrite_state=1\nlist_state=1\nread_log=1\n\
             list_pins=1\nlist_links=1\nopen_pin=1\nunlink_pin={unlink_pin}\n\
             write_unit=1\nread_unit=1\nlist_run=1\n{name_changes}"
        ),
        "{out:?}"
    );
    let sid = d.session("self").id;
    if lsm {
        // Every change to a name was refused inside the call and recorded under it, with
        // the daemon's rule; nothing was made or moved.
        let evs = d.wait_for(&sid, "the refused changes to names", |evs| {
            evs.iter().filter(|e| e.syscall().is_some()).count() >= 9
        });
        let calls: Vec<&str> = evs
            .iter()
            .filter_map(|e| e.syscall().map(|s| s.name.as_str()))
            .collect();
        // Each attempt under the call that reached the hook (libc may take the `*at`
        // form of a call).
        for names in [
            &["unlink", "unlinkat"][..],
            &["rename", "renameat", "renameat2"],
            &["link", "linkat"],
            &["truncate"],
            &["mkdir", "mkdirat"],
            &["symlink", "symlinkat"],
            &["bind"],
            &["openat", "open"],
        ] {
            assert!(
                names.iter().any(|n| calls.contains(n)),
                "{names:?} not recorded: {calls:?}"
            );
        }
        for e in evs.iter().filter(|e| e.syscall().is_some()) {
            let dec = e.decision.as_ref().unwrap();
            assert_eq!(
                (dec.action, dec.enforced_by),
                (Action::Blocked, Layer::Lsm),
                "{e:?}"
            );
            assert!(
                dec.rule.starts_with("agentwarden self-protection: "),
                "{e:?}"
            );
        }
        assert!(!state.join("planted").exists() && !state.join("d").exists());
        assert!(d.pins().join("maps/SESSIONS").exists());
        assert!(d.db().metadata().unwrap().len() > 0);
        let rows = d.audit_session(&sid);
        assert!(
            rows.iter()
                .any(|r| r["kind"] == "syscall_decision" && r["decision"]["enforced_by"] == "lsm"),
            "{rows:?}"
        );
    }
    // Without BPF-LSM an unlink is no open (threat model): the daemon holds every pinned
    // object, so nothing detached, and its sweep pins the map again for a successor.
    let start = Instant::now();
    if !lsm {
        loop {
            let st: StatusReport = d.json(&["status", "--json"]);
            if d.pins().join("maps/SESSIONS").exists() && st.daemon_counters.pins_restored >= 1 {
                break;
            }
            assert!(
                start.elapsed() < patience(),
                "the pin was not restored:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    // Without BPF-LSM `O_CREAT` makes the name before any open hook can refuse the open:
    // the file may be there, empty; nothing was written.
    assert_eq!(fs::read(state.join("planted")).unwrap_or_default(), b"");
    assert_eq!(
        fs::read(&unit).unwrap(),
        b"[Service]\n",
        "the unit is unchanged"
    );
    let evs = d.wait_for(&sid, "the refusals", |evs| {
        // The open of a map's pin is refused by the kernel itself without a record on
        // the fanotify layer (bpffs objects cannot be opened as files: fanotify cannot
        // give the daemon a descriptor, and denies the waiting open itself).
        with_action(evs, Action::Blocked).count() >= 9
    });
    refused_by_self_protection(&evs, "agentwarden self-protection: ");
    // Outside every session: as before.
    assert!(fs::read(d.db()).is_ok());
}

/// Self-protection holds in every mode: a session under a `monitor` profile, whose own
/// deny rule is only recorded, is still refused the daemon's audit store and state
/// directory (`EPERM`, by the fanotify layer or BPF-LSM), recorded `blocked` with the
/// daemon's rule.
#[test]
fn a_monitored_session_is_still_refused_the_daemons_own_directories() {
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    fs::create_dir(dir.join("secret")).unwrap();
    fs::write(dir.join("secret/key"), "KEY\n").unwrap();
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("watching.yaml"),
        format!(
            "name: watching\ndescription: t\nowners: {{ business: b, technical: t }}\n\
             mode: monitor\nfiles:\n  deny:\n    - {}/secret/**\n  on_violation: block\n",
            dir.display()
        ),
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let state = fs::canonicalize(d.db().parent().unwrap()).unwrap();
    let probe = format!(
        "import os\n\
         def attempt(label, f):\n    try:\n        f()\n        print(label + '=ok')\n    \
         except OSError as e:\n        print(label + '=' + str(e.errno))\n\
         attempt('read_db', lambda: open('{db}', 'rb').read(16))\n\
         attempt('list_state', lambda: os.listdir('{state}'))\n\
         attempt('read_key', lambda: open('{dir}/secret/key').read())\n",
        db = d.db().display(),
        state = state.display(),
        dir = dir.display(),
    );
    let out = d.run_profile(
        "watching",
        "watched",
        &dir,
        &["/usr/bin/python3", "-c", &probe],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "read_db=1\nlist_state=1\nread_key=ok\n",
        "{out:?}"
    );
    let sid = d.session("watched").id;
    let key = dir.join("secret/key").display().to_string();
    let evs = d.wait_for(&sid, "the refusals and the alert", |evs| {
        with_action(evs, Action::Blocked).count() >= 2
            && evs
                .iter()
                .any(|e| e.open().is_some_and(|o| o.path == key) && e.decision.is_some())
    });
    refused_by_self_protection(&evs, "agentwarden self-protection: its state directory");
    // The profile's own rule: recorded, not enforced (monitor mode).
    let read = evs
        .iter()
        .find(|e| e.open().is_some_and(|o| o.path == key) && e.decision.is_some())
        .unwrap();
    assert_eq!(read.decision.as_ref().unwrap().action, Action::Alerted);
    let rows = d.audit_session(&sid);
    assert!(
        rows.iter().any(|r| r["decision"]["action"] == "blocked"
            && r["decision"]["rule"]
                .as_str()
                .is_some_and(|s| s.starts_with("agentwarden self-protection"))),
        "{rows:?}"
    );
}

/// Every refusal among `evs` was an open refused (`EPERM`, by the fanotify layer or
/// BPF-LSM) under a self-protection rule whose label starts with `rule`.
fn refused_by_self_protection(evs: &[Event], rule: &str) {
    for e in with_action(evs, Action::Blocked) {
        let dec = e.decision.as_ref().unwrap();
        assert!(
            matches!(dec.enforced_by, Layer::Fanotify | Layer::Lsm),
            "{e:?}"
        );
        assert!(dec.rule.starts_with(rule), "{e:?}");
    }
}
