//! Sessions: identity inherited in the kernel through fork, exec, setsid and exit;
//! paths as the kernel resolved them; capacity limits counted and enforced.

use crate::support::*;

#[test]
fn exec_open_and_connect_carry_session_and_resolved_paths() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(work.path()).expect("canonical");
    fs::create_dir_all(root.join("real/sub")).expect("mkdir");
    fs::write(root.join("real/target.txt"), "secret\n").expect("write");
    symlink("real/target.txt", root.join("link")).expect("symlink");
    let v4 = TcpListener::bind("127.0.0.1:0").expect("listen v4");
    let v6 = TcpListener::bind("[::1]:0").expect("listen v6");
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );

    // A relative path with `..` through a symlink, then TCP connects over IPv4 and IPv6.
    let script =
        format!("cat ../../link && exec 3<>/dev/tcp/127.0.0.1/{p4} && exec 4<>/dev/tcp/::1/{p6}");
    let out = d.run_in("paths", &root.join("real/sub"), &["bash", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");

    let sid = d.session("paths").id;
    let target = root.join("real/target.txt");
    let evs = d.wait_for(&sid, "open, connects and exits", |evs| {
        opens_of(evs, &target).count() == 1
            && evs.iter().filter(|e| e.connect().is_some()).count() == 2
            && evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    assert!(
        evs.iter()
            .all(|e| e.session.id == sid && e.session.name == "paths")
    );
    assert!(evs.iter().all(|e| e.session.profile == "demo"));

    let cat = fs::canonicalize("/bin/cat").expect("cat");
    let exec = evs
        .iter()
        .find_map(|e| {
            e.exec()
                .filter(|x| x.argv.first().map(String::as_str) == Some("cat"))
        })
        .unwrap_or_else(|| panic!("no exec of cat:\n{}", dump(&evs)));
    assert_eq!(
        Path::new(&exec.path),
        cat,
        "exec path is the kernel's resolved file"
    );
    assert_eq!(exec.argv, ["cat", "../../link"]);
    assert_eq!(Path::new(&exec.cwd), root.join("real/sub"));
    assert!(!exec.argv_truncated);

    let open = opens_of(&evs, &target).next().expect("open event");
    let o = open.open().expect("open body");
    assert!(o.path_resolved && !o.path_truncated);
    assert!(o.result >= 0, "open result {}", o.result);
    assert_eq!(o.flags.first().map(|f| &**f), Some("O_RDONLY"));
    let p = open.process.as_ref().expect("process");
    assert_eq!(
        (p.comm.as_str(), p.uid, p.user.as_deref()),
        ("cat", 0, Some("root"))
    );
    assert!(p.cgroup_id != 0 && p.ppid != 0);

    let connects: Vec<_> = evs.iter().filter_map(|e| e.connect()).collect();
    assert_eq!(
        (
            connects[0].family.as_str(),
            connects[0].address.as_str(),
            connects[0].port,
            connects[0].result
        ),
        ("inet", "127.0.0.1", p4, 0)
    );
    assert_eq!(
        (
            connects[1].family.as_str(),
            connects[1].address.as_str(),
            connects[1].port,
            connects[1].result
        ),
        ("inet6", "::1", p6, 0)
    );
    // The launcher exec'd bash in place: the session root's exit carries bash's status.
    let root_pid = d.session("paths").root_pid;
    let exit = evs
        .iter()
        .find(|e| e.exit().is_some() && tgid(e) == root_pid)
        .expect("exit");
    assert_eq!(exit.exit().unwrap().code, Some(0));
}

#[test]
fn double_fork_and_setsid_stay_in_session_until_the_last_exit() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let marker = fs::canonicalize(work.path()).unwrap().join("marker");
    fs::write(&marker, "x").unwrap();
    let gate = work.path().join("gate");
    // The grandchild detaches (double fork + setsid) and outlives the launcher.
    let script = format!(
        "( setsid sh -c 'while [ ! -e {g} ]; do sleep 0.05; done; cat {m}' \
           </dev/null >/dev/null 2>&1 & ) ; exit 0",
        g = gate.display(),
        m = marker.display()
    );
    let out = d.run_in("detach", work.path(), &["bash", "-c", &script]);
    assert!(out.status.success());
    let s = d.session("detach");
    assert_eq!(
        s.state, "active",
        "the detached grandchild keeps the session alive"
    );
    assert!(s.processes >= 1);

    fs::write(&gate, "").unwrap();
    let evs = d.wait_for(&s.id, "the grandchild's open and session end", |evs| {
        opens_of(evs, &marker).count() == 1 && evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let open = opens_of(&evs, &marker).next().unwrap();
    assert_ne!(tgid(open), s.root_pid);
    assert_eq!(evs.last().map(|e| e.kind()), Some(EventKind::SessionEnd));
    let ended = d.session("detach");
    assert_eq!((ended.state.as_str(), ended.processes), ("ended", 0));
}

#[test]
fn processes_outside_every_session_produce_no_event() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let dir = fs::canonicalize(work.path()).unwrap();
    let outside = dir.join("outside.txt");
    let inside = dir.join("inside.txt");
    fs::write(&outside, "o").unwrap();
    fs::write(&inside, "i").unwrap();
    // A live session exists while the outside process acts.
    let gate = dir.join("gate");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; cat {}",
        gate.display(),
        inside.display()
    );
    let mut session = d
        .cli()
        .args([
            "run",
            "--profile",
            "demo",
            "--session-name",
            "live",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !d.sessions().iter().any(|s| s.name == "live") {
        assert!(start.elapsed() < patience());
        thread::sleep(Duration::from_millis(50));
    }
    let mut buf = String::new();
    fs::File::open(&outside)
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    let st = Command::new("cat")
        .arg(&outside)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(&gate, "").unwrap();
    assert!(session.wait().unwrap().success());
    let sid = d.session("live").id;
    d.wait_for(&sid, "the in-session open", |evs| {
        opens_of(evs, &inside).count() == 1
    });
    let all = d.events(None);
    assert_eq!(
        opens_of(&all, &outside).count(),
        0,
        "outside opens leaked:\n{}",
        dump(&all)
    );
    let me = std::process::id();
    assert!(
        all.iter()
            .filter_map(|e| e.process.as_ref())
            .all(|p| p.tgid != me)
    );
}

#[test]
fn exit_code_and_fatal_signal_are_reported() {
    let Some(d) = Daemon::start() else { return };
    let cwd = std::env::temp_dir();
    let out = d.run_in("code", &cwd, &["bash", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "run exits with the agent's status"
    );
    let out = d.run_in("killed", &cwd, &["bash", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.signal(), Some(9));

    for (name, code, signal) in [("code", Some(7), None), ("killed", None, Some(9))] {
        let s = d.session(name);
        let evs = d.wait_for(&s.id, "exit", |evs| evs.iter().any(|e| e.exit().is_some()));
        let exit = evs.iter().find_map(|e| e.exit()).unwrap();
        assert_eq!((exit.code, exit.signal), (code, signal), "{name}");
    }
}

#[test]
fn attach_enrols_a_running_tree() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    let target = dir.join("target");
    fs::write(&target, "t").unwrap();
    let gate = dir.join("gate");
    let script = format!(
        "( while [ ! -e {g} ]; do sleep 0.05; done; cat {t} >/dev/null ) & wait",
        g = gate.display(),
        t = target.display()
    );
    let mut tree = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    // Let the subshell exist before attaching.
    thread::sleep(Duration::from_millis(300));
    let out = d
        .cli()
        .args([
            "attach",
            "--pid",
            &tree.id().to_string(),
            "--profile",
            "demo",
            "--session-name",
            "att",
        ])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("descendant"), "{text}");
    let s = d.session("att");
    assert!(s.processes >= 2, "root and its subshell: {s:?}");
    fs::write(&gate, "").unwrap();
    assert!(tree.wait().unwrap().success());
    let evs = d.wait_for(&s.id, "the subshell's open", |evs| {
        opens_of(evs, &target).count() == 1
    });
    let open = opens_of(&evs, &target).next().unwrap();
    assert_ne!(
        tgid(open),
        tree.id(),
        "the open came from a descendant enrolled by attach"
    );
}

#[test]
fn a_full_session_map_is_counted_and_raised_never_silent() {
    // Room for the launcher and two children only.
    let Some(d) = Daemon::start_with(&["--max-tracked-processes", "3"]) else {
        return;
    };
    let out = d.run_in(
        "full",
        &std::env::temp_dir(),
        &[
            "bash",
            "-c",
            "for i in 1 2 3 4 5 6; do sleep 0.3 & done; wait",
        ],
    );
    assert!(out.status.success());
    let sid = d.session("full").id;
    let evs = d.wait_for(&sid, "session_map_full events", |evs| {
        evs.iter()
            .filter(|e| e.kind() == EventKind::SessionMapFull)
            .count()
            >= 3
    });
    let lost: Vec<u32> = evs
        .iter()
        .filter(|e| e.kind() == EventKind::SessionMapFull)
        .map(|e| e.fork().expect("child").child_tgid)
        .collect();
    assert!(lost.iter().all(|t| *t != 0));
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.tracked_processes_max, 3);
    let full = st
        .kernel_counters
        .iter()
        .find(|c| c.name == "session_map_full")
        .unwrap();
    assert!(full.total >= lost.len() as u64, "{full:?}");
    // `demo` is a monitor profile: the untracked children are recorded, not touched.
    for e in evs.iter().filter(|e| e.kind() == EventKind::SessionMapFull) {
        let dec = e
            .decision
            .as_ref()
            .expect("a decision on every untracked child");
        assert_eq!(
            (dec.action.as_str(), dec.enforced_by.as_str()),
            ("alerted", "none")
        );
    }
    // The daemon raises the counter as a loss event too.
    let start = Instant::now();
    while !d
        .events(None)
        .iter()
        .any(|e| e.loss().is_some_and(|l| l.counter == "session_map_full"))
    {
        assert!(start.elapsed() < patience(), "no loss event");
        thread::sleep(Duration::from_millis(100));
    }
}

/// In an enforce-mode session a child the kernel cannot track would run outside its
/// profile: the daemon kills it (and only it), and the event says so.
#[test]
fn an_enforce_session_child_that_cannot_be_tracked_is_killed() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("strict.yaml"),
        "name: strict\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--max-tracked-processes", "3", "--rules-dir", &rd]) else {
        return;
    };
    // Six children that would each live 8 s; every wait reports pid and status.
    let script = "for i in 1 2 3 4 5 6; do sleep 8 & p=\"$p $!\"; done; \
                  for c in $p; do wait $c; echo \"$c $?\"; done";
    let out = d.run_profile(
        "strict",
        "strict",
        &std::env::temp_dir(),
        &["bash", "-c", script],
    );
    let status: BTreeMap<u32, i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, st) = l.split_once(' ')?;
            Some((pid.parse().ok()?, st.parse().ok()?))
        })
        .collect();
    assert_eq!(status.len(), 6, "{out:?}");
    let sid = d.session("strict").id;
    let killed = status
        .values()
        .filter(|s| **s == 128 + libc::SIGKILL)
        .count();
    let evs = d.wait_for(&sid, "a decision per untracked child", |evs| {
        evs.iter()
            .filter(|e| e.kind() == EventKind::SessionMapFull)
            .count()
            >= killed
    });
    let untracked: BTreeMap<u32, &DecisionInfo> = evs
        .iter()
        .filter(|e| e.kind() == EventKind::SessionMapFull)
        .map(|e| (e.fork().unwrap().child_tgid, e.decision.as_ref().unwrap()))
        .collect();
    assert!(!untracked.is_empty(), "the map (3) cannot hold 6 children");
    for (pid, st) in &status {
        match untracked.get(pid) {
            // Killed before its 8 s sleep ended; the event names the layer.
            Some(dec) => {
                assert_eq!(*st, 128 + libc::SIGKILL, "untracked child {pid}");
                assert_eq!(
                    (
                        dec.decision.as_str(),
                        dec.action.as_str(),
                        dec.enforced_by.as_str()
                    ),
                    ("deny", "killed", "signal")
                );
                assert!(dec.rule.starts_with("tracking.capacity"), "{dec:?}");
            }
            // A tracked child is untouched.
            None => assert_eq!(*st, 0, "tracked child {pid}"),
        }
    }
}

/// openat2(2) goes through its own tracepoints; its opens are resolved like openat's.
#[test]
fn openat2_opens_are_observed_and_resolved() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    fs::write(dir.join("file"), "x").unwrap();
    symlink("file", dir.join("alias")).unwrap();
    // struct open_how { u64 flags; u64 mode; u64 resolve; } — SYS_openat2 is 437 on x86_64.
    let py = "import ctypes, sys\n\
class How(ctypes.Structure):\n    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
fd = libc.syscall(437, -100, b'alias', ctypes.byref(How(0o2000000, 0, 0)), 24)\n\
sys.exit(0 if fd >= 0 else 1)\n";
    let out = d.run_in("o2", &dir, &["/usr/bin/python3", "-c", py]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sid = d.session("o2").id;
    let target = dir.join("file");
    let evs = d.wait_for(&sid, "the openat2 event", |evs| {
        opens_of(evs, &target).any(|e| e.open().is_some_and(|o| o.syscall == "openat2"))
    });
    let o = opens_of(&evs, &target).find_map(|e| e.open().filter(|o| o.syscall == "openat2"));
    let o = o.unwrap();
    assert!(o.path_resolved && o.result >= 0);
    assert_eq!(o.flags, ["O_RDONLY", "O_CLOEXEC"]);
}

/// Attaching to a process whose children come and go by the hundred: a child that exits
/// between the daemon's read of /proc and its entry in the session map leaves no stale
/// entry behind, so each session ends when its last process does (rounds make the race
/// likely; before the check, a stale entry kept a session open for ever).
#[test]
fn an_attached_session_with_short_lived_children_ends_with_its_last_process() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    for round in 0..4 {
        let gate = work.path().join(format!("gate-{round}"));
        let mut churn = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "while [ ! -e {} ]; do /bin/true & /bin/true & /bin/true; done; wait",
                    gate.display()
                ),
            ])
            .spawn()
            .unwrap();
        // Let the churn start before attaching.
        thread::sleep(Duration::from_millis(100));
        let name = format!("churn-{round}");
        let out = d
            .cli()
            .args(["attach", "--pid", &churn.id().to_string()])
            .args(["--profile", "demo", "--session-name", &name])
            .output_within();
        assert!(out.status.success(), "{out:?}");
        thread::sleep(Duration::from_millis(200));
        fs::write(&gate, "").unwrap();
        assert!(churn.wait().unwrap().success());
        let start = Instant::now();
        loop {
            let s = d.session(&name);
            if s.state == "ended" {
                break;
            }
            assert!(
                start.elapsed() < patience(),
                "{name} never ended: {s:?}\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}
