//! Side doors: every route to a denied file, program or destination, each tried by a
//! real process in a real session with `awprobe` (one route per run). Judged on what the
//! process got back (the errno, or the secret's bytes), the recorded decision (rule and
//! layer) and the audit row. Where BPF-LSM runs (the VM tier's 6.12) it refuses opens
//! first (`lsm`); reads of descriptors held before enrolment are refused by the fanotify
//! layer everywhere.

use crate::support::*;

/// A fixture profile whose every deny rule names a file or a tree, so `block` is
/// carried out by refusal on any host with fanotify (no name pattern, which only BPF-LSM
/// can refuse). It also denies a script, `bin/script.sh`, written here.
fn marked_profile(f: &PathFixture, name: &str, on_violation: &str) {
    fs::write(f.dir.join("bin/script.sh"), "echo SCRIPT-RAN\n").unwrap();
    let text = format!(
        "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
         exec:\n  deny: [{d}/bin/tool, {d}/bin/script.sh]\n  on_violation: {on_violation}\n  fileless: deny\n\
         files:\n  deny:\n    - {d}/canary\n    - {d}/secret/**\n  on_violation: {on_violation}\n\
         network:\n  default: deny\n  allow:\n    - {{ cidr: 127.0.0.2 }}\n  on_violation: {on_violation}\n",
        d = f.dir.display()
    );
    fs::write(f.rules.path().join(format!("{name}.yaml")), text).unwrap();
}

/// The probe's one-line verdict.
fn verdict(out: &Output) -> String {
    assert!(
        out.status.success(),
        "the probe must keep working after a refusal: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The blocked decision of `session`, and that it is in the audit trail.
fn blocked(d: &Daemon, session: &str) -> Event {
    let sid = d.session(session).id;
    let evs = d.wait_for(&sid, "the refusal", |evs| {
        with_action(evs, Action::Blocked).next().is_some()
    });
    let ev = with_action(&evs, Action::Blocked).next().unwrap().clone();
    // The refusal layer's record is queued beside the ring: it can reach the store after
    // the session's end does.
    let start = Instant::now();
    loop {
        let rows = d.audit_session(&sid);
        if rows.iter().any(|r| {
            r["decision"]["action"] == "blocked"
                && r["decision"]["enforced_by"]
                    == ev.decision.as_ref().unwrap().enforced_by.as_str()
        }) {
            return ev;
        }
        assert!(
            start.elapsed() < patience(),
            "{session}: no blocked row in the audit trail: {rows:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn layer_of(e: &Event) -> Layer {
    e.decision.as_ref().unwrap().enforced_by
}

/// Opening the denied key and canary without an `open(path)` the simplest rules see:
/// io_uring, a file handle, a `/proc/self/fd` re-open of an `O_PATH` handle, a directory
/// descriptor, `/proc/self/root`, another mount namespace (a bind mount), a chroot, and a
/// file created in the denied tree after the rules were bound, and a listing of the tree's
/// directory. Each gets `EPERM`, the
/// process goes on, and the decision names the rule and the layer. Outside every session
/// the same files read normally.
#[test]
fn file_routes_without_an_open_by_path_are_refused() {
    let f = PathFixture::on_tmpfs();
    marked_profile(&f, "routes", "block");
    let Some(d) = f.daemon() else { return };
    let lsm = lsm_attached(&d);
    let dir = f.dir.display().to_string();
    let key = format!("{dir}/secret/key");
    let probe = probe();
    let mnt = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("r-plain", vec![probe.into(), "read".into(), key.clone()]),
        (
            "r-uring",
            vec![probe.into(), "uring-open".into(), key.clone()],
        ),
        ("r-handle", vec![probe.into(), "handle".into(), key.clone()]),
        (
            "r-procfd",
            vec![probe.into(), "proc-fd".into(), key.clone()],
        ),
        (
            "r-dirfd",
            vec![
                probe.into(),
                "dirfd".into(),
                format!("{dir}/secret"),
                "key".into(),
            ],
        ),
        (
            "r-procroot",
            vec![
                probe.into(),
                "read".into(),
                format!("/proc/self/root{dir}/canary"),
            ],
        ),
        (
            "r-mntns",
            vec![
                "unshare".into(),
                "-m".into(),
                "sh".into(),
                "-c".into(),
                format!(
                    "mount --bind {dir}/secret {m} && exec {probe} read {m}/key",
                    m = mnt.path().display()
                ),
            ],
        ),
        (
            "r-chroot",
            vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                format!(
                    "import os\nos.chroot('{dir}')\nos.chdir('/')\n\
                     try:\n  print('ok-LEAK' if 'BYTES' in open('/secret/key').read() else 'ok')\n\
                     except OSError as e:\n  print('errno', e.errno)"
                ),
            ],
        ),
        // A listing of the denied tree's own directory (`/dir/**` names it too): what
        // is in it is not shown.
        (
            "r-listing",
            vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                format!(
                    "import os\n\
                     try:\n  print('ok-LEAK' if 'key' in os.listdir('{dir}/secret') else 'ok')\n\
                     except OSError as e:\n  print('errno', e.errno)"
                ),
            ],
        ),
    ];
    for (name, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.run_profile("routes", name, &f.dir, &args);
        assert_eq!(verdict(&out), "errno 1", "{name}: {out:?}");
    }
    // A key written into the denied tree after the rules were bound: the tree's
    // directory mark refuses it by path.
    fs::write(f.dir.join("secret/new-key"), "NEW-KEY-BYTES\n").unwrap();
    let out = d.run_profile(
        "routes",
        "r-newfile",
        &f.dir,
        &[probe, "read", &format!("{dir}/secret/new-key")],
    );
    assert_eq!(verdict(&out), "errno 1", "r-newfile: {out:?}");

    for (name, _) in cases.iter().chain([&("r-newfile", Vec::new())]) {
        let ev = blocked(&d, name);
        let dec = ev.decision.as_ref().unwrap();
        assert_eq!(dec.decision, Verdict::Deny, "{name}");
        let want = if lsm { Layer::Lsm } else { Layer::Fanotify };
        assert_eq!(dec.enforced_by, want, "{name}: {ev:?}");
        assert!(dec.rule.contains("routes.yaml"), "{name}: {dec:?}");
        assert!(dec.rule.contains("files.deny"), "{name}: {dec:?}");
    }
    // Outside every session nothing is refused.
    let out = Command::new(probe)
        .args(["uring-open", &key])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok-LEAK");
    let st: StatusReport = d.json(&["status", "--json"]);
    let fan = st.programs.iter().find(|p| p.name == "fanotify").unwrap();
    assert_eq!(fan.state, "attached", "{fan:?}");
}

/// A descriptor of the key opened before enrolment (the session inherits it) is no way
/// around the rule: `read`, `sendfile`, `splice`, `copy_file_range` and an io_uring read
/// of it are refused with `EPERM` (the fanotify layer on every kernel: BPF-LSM is not
/// asked about reads), recorded as a blocked `read` with the rule.
#[test]
fn descriptors_held_before_enrolment_cannot_be_read() {
    let f = PathFixture::on_tmpfs();
    marked_profile(&f, "held", "block");
    let Some(d) = f.daemon() else { return };
    let key = f.dir.join("secret/key");
    for route in ["fd-read", "fd-sendfile", "fd-splice", "fd-copy", "fd-uring"] {
        let name = format!("h-{route}");
        // copy_file_range copies into an unnamed file in the fixture (same filesystem).
        let script = format!(
            "exec 3<{key}; exec {bin} --socket {sock} run --profile held --session-name {name} -- {probe} {route} 3 {scratch}",
            scratch = f.dir.display(),
            key = key.display(),
            bin = bin(),
            sock = d.socket().display(),
            probe = probe(),
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .current_dir(&f.dir)
            .output_within();
        assert_eq!(verdict(&out), "errno 1", "{name}: {out:?}");
        let ev = blocked(&d, &name);
        assert_eq!(layer_of(&ev), Layer::Fanotify, "{name}");
        let o = ev.open().expect("recorded as an access to the file");
        assert_eq!(
            (&*o.syscall, o.path.as_str(), o.result),
            ("read", key.to_str().unwrap(), -1),
            "{name}"
        );
    }
}

/// A denied program runs by no route: its path, a hard link, the dynamic loader mapping
/// it, an interpreter reading a denied script, a copy made in the session (reading its
/// bytes is refused) and one made before it under another name (matched by content
/// digest) all get `EPERM`; the caller goes on.
/// With `exec.fileless: deny`, a program run from a deleted file is refused too, and one
/// run from a memory file is refused by BPF-LSM or, where it is absent, killed at exec
/// (memory files live where fanotify cannot mark).
#[test]
fn program_routes_are_refused() {
    let f = PathFixture::on_tmpfs();
    marked_profile(&f, "progs", "block");
    let Some(d) = f.daemon() else { return };
    let lsm = lsm_attached(&d);
    let dir = f.dir.display().to_string();
    let tool = format!("{dir}/bin/tool");
    fs::hard_link(&tool, f.dir.join("bin/linked")).unwrap();
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-x86-64.so.2"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("the dynamic loader");
    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let cases = [
        ("p-path", sh(&format!("{tool} -c /dev/null; echo rc=$?"))),
        (
            "p-link",
            sh(&format!("{dir}/bin/linked -c /dev/null; echo rc=$?")),
        ),
        (
            "p-loader",
            sh(&format!("{loader} {tool} -c /dev/null; echo rc=$?")),
        ),
        (
            "p-copy",
            sh(&format!("cp {tool} {dir}/bin/copied; echo rc=$?")),
        ),
        // A denied script through the interpreter that would read it.
        (
            "p-interpreter",
            sh(&format!("sh {dir}/bin/script.sh; echo rc=$?")),
        ),
        (
            "p-copy-before",
            sh(&format!("{dir}/bin/other-name -c /dev/null; echo rc=$?")),
        ),
        (
            "p-deleted",
            sh(&format!(
                "cp /usr/bin/true {dir}/gone; exec 3<{dir}/gone; rm {dir}/gone; \
                 /proc/self/fd/3; echo rc=$?"
            )),
        ),
    ];
    // A copy made outside the session, before it started: another inode, same bytes.
    fs::copy(&tool, f.dir.join("bin/other-name")).unwrap();
    for (name, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.run_profile("progs", name, &f.dir, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: the caller goes on: {out:?}");
        assert!(
            !stdout.contains("rc=0"),
            "{name}: the program ran or was copied: {stdout}{stderr}"
        );
        assert!(
            stderr.contains("not permitted"),
            "{name}: EPERM expected: {stderr}"
        );
        let ev = blocked(&d, name);
        let dec = ev.decision.as_ref().unwrap();
        let rule = match *name {
            "p-deleted" => "(exec.fileless)",
            "p-interpreter" => "(exec.deny[1])",
            _ => "(exec.deny[0])",
        };
        assert!(dec.rule.ends_with(rule), "{name}: {dec:?}");
        if !lsm || *name == "p-copy-before" {
            assert_eq!(dec.enforced_by, Layer::Fanotify, "{name}");
        }
    }
    // From memory: no filesystem holds it.
    let out = d.run_profile(
        "progs",
        "p-memfd",
        &f.dir,
        &[probe(), "memfd-exec", "/usr/bin/true"],
    );
    let sid = d.session("p-memfd").id;
    let want = if lsm {
        assert_eq!(verdict(&out), "errno 1", "{out:?}");
        (Action::Blocked, Layer::Lsm)
    } else {
        assert_eq!(out.status.signal(), Some(9), "{out:?}");
        (Action::Killed, Layer::Signal)
    };
    let fileless = |x: &DecisionInfo| x.rule.ends_with("(exec.fileless)");
    let evs = d.wait_for(&sid, "the fileless decision", |evs| {
        evs.iter()
            .any(|e| e.decision.as_ref().is_some_and(fileless))
    });
    let dec = evs
        .iter()
        .find_map(|e| e.decision.clone().filter(fileless))
        .unwrap();
    assert_eq!((dec.action, dec.enforced_by), want, "{dec:?}");
    assert!(
        !f.dir.join("bin/copied").exists()
            || fs::read(f.dir.join("bin/copied")).unwrap().is_empty()
    );
}

/// A program the daemon stopped asking about (its execs let through, no rule naming it)
/// is asked about again once a rule denies it: a reload that adds the rule takes the
/// shortcut away.
#[test]
fn a_program_denied_after_it_ran_is_refused() {
    let f = PathFixture::on_tmpfs();
    let dir = f.dir.display().to_string();
    fs::copy("/usr/bin/true", f.dir.join("bin/later")).unwrap();
    let profile = |deny: &str| {
        let text = format!(
            "name: late\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
             exec:\n  deny: [{deny}]\n  on_violation: block\n"
        );
        fs::write(f.rules.path().join("late.yaml"), text).unwrap();
    };
    profile(&format!("{dir}/bin/tool"));
    let Some(d) = f.daemon() else { return };
    let later = format!("{dir}/bin/later");
    for i in 0..3 {
        let out = d.run_profile("late", &format!("l-ok{i}"), &f.dir, &[later.as_str()]);
        assert!(out.status.success(), "allowed before the rule: {out:?}");
    }
    // The premise: its execs are no longer asked about (an ignore mark).
    let st: StatusReport = d.json(&["status", "--json"]);
    let ignored = st
        .kernel_counters
        .iter()
        .find(|c| c.name == "fanotify_exec_ignored")
        .map_or(0, |c| c.total);
    assert!(
        ignored >= 1,
        "no exec ignore mark was set: {:?}",
        st.kernel_counters
    );
    profile(&later);
    d.reload();
    let out = d.run_profile("late", "l-denied", &f.dir, &[later.as_str()]);
    assert_eq!(
        out.status.code(),
        Some(126),
        "refused after the rule: {out:?}"
    );
    let ev = blocked(&d, "l-denied");
    assert!(
        ev.decision
            .as_ref()
            .unwrap()
            .rule
            .ends_with("(exec.deny[0])")
    );
}

/// Connects and datagrams submitted through io_uring are judged by destination like
/// their syscalls (the cgroup hooks run for both), IPv4-mapped IPv6 included: refused
/// outside the allow list, let through inside it. DNS goes only to the resolvers the
/// profile allows, over UDP and TCP.
#[test]
fn io_uring_connects_and_sends_are_judged_by_destination() {
    let f = PathFixture::on_tmpfs();
    marked_profile(&f, "net", "block");
    let Some(d) = f.daemon() else { return };
    let probe = probe();
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    for (name, args, want) in [
        (
            "n-connect",
            vec!["uring-connect", "127.0.0.1", port.as_str()],
            "errno 1",
        ),
        (
            "n-mapped",
            vec!["uring-connect", "::ffff:127.0.0.1", port.as_str()],
            "errno 1",
        ),
        ("n-send", vec!["uring-sendto", "127.0.0.1", "9"], "errno 1"),
        (
            "n-allowed",
            vec!["uring-connect", "127.0.0.2", port.as_str()],
            "ok",
        ),
        // Name resolution only through the resolvers the profile names.
        ("n-dns", vec!["dns", "127.0.0.9"], "errno 1"),
        (
            "n-dns-tcp",
            vec!["uring-connect", "127.0.0.9", "53"],
            "errno 1",
        ),
        ("n-dns-allowed", vec!["dns", "127.0.0.2"], "ok"),
    ] {
        let mut a = vec![probe];
        a.extend(args);
        let out = d.run_profile("net", name, &f.dir, &a);
        assert_eq!(verdict(&out), want, "{name}: {out:?}");
        if want != "ok" {
            let ev = blocked(&d, name);
            assert_eq!(layer_of(&ev), Layer::Cgroup, "{name}");
        }
    }
}

/// A packet socket (frames below IP, which no destination rule judges) in a session whose
/// network default is deny: refused by BPF-LSM through the syscall and io_uring alike;
/// without it by the kernel's capability check (`run` dropped `CAP_NET_RAW`), through
/// both routes too. Recorded with the layer (the io_uring refusal by the capability check
/// has no syscall to be seen at, and is not recorded without BPF-LSM).
#[test]
fn packet_sockets_are_stopped_at_creation() {
    let f = PathFixture::on_tmpfs();
    marked_profile(&f, "pkt", "block");
    let Some(d) = f.daemon() else { return };
    let lsm = lsm_attached(&d);
    let probe = probe();
    let packet_decision = |name: &str| {
        let sid = d.session(name).id;
        let evs = d.wait_for(&sid, "the packet socket decision", |evs| {
            evs.iter()
                .any(|e| e.net().is_some_and(|n| n.family == "packet"))
        });
        let packet: Vec<&Event> = evs
            .iter()
            .filter(|e| e.net().is_some_and(|n| n.family == "packet"))
            .collect();
        assert_eq!(packet.len(), 1, "one record per refusal:\n{}", dump(&evs));
        let ev = packet[0].clone();
        let dec = ev.decision.clone().unwrap();
        assert_eq!(
            (dec.decision, dec.rule.as_str()),
            (Verdict::Deny, "network.default")
        );
        (dec.action, dec.enforced_by)
    };
    let out = d.run_profile("pkt", "k-packet", &f.dir, &[probe, "packet"]);
    if lsm {
        assert_eq!(verdict(&out), "errno 1", "{out:?}");
        assert_eq!(packet_decision("k-packet"), (Action::Blocked, Layer::Lsm));
        let out = d.run_profile("pkt", "k-uring-packet", &f.dir, &[probe, "uring-packet"]);
        assert_eq!(verdict(&out), "errno 1", "{out:?}");
        assert_eq!(
            packet_decision("k-uring-packet"),
            (Action::Blocked, Layer::Lsm)
        );
    } else {
        assert_eq!(verdict(&out), "errno 1", "{out:?}");
        assert_eq!(
            packet_decision("k-packet"),
            (Action::Blocked, Layer::Capabilities)
        );
        let out = d.run_profile("pkt", "k-uring-packet", &f.dir, &[probe, "uring-packet"]);
        assert_eq!(verdict(&out), "errno 1", "{out:?}");
    }
}

/// A name pattern (`**/.env`) without BPF-LSM: the files it matches in and above a
/// session's working directory when the session enrols are bound to their inodes and
/// refused (`EPERM`) like exact rules, so an agent that loads its project's `.env` at
/// start-up is refused, not killed; a new session in that directory searches again. A
/// matching file elsewhere, or made during the session, is met by the `fallback: kill`
/// (where BPF-LSM runs, everything is refused by name).
#[test]
fn name_patterns_are_refused_for_the_files_where_the_session_works() {
    let f = PathFixture::new();
    let d = f.dir.display().to_string();
    fs::write(
        f.rules.path().join("names.yaml"),
        "name: names\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         files:\n  deny: [\"**/.env\"]\n  on_violation: block\n  fallback: kill\n",
    )
    .unwrap();
    let work = f.dir.join("app");
    fs::create_dir_all(work.join("svc")).unwrap();
    for p in [".env", "app/.env", "app/svc/.env"] {
        fs::write(f.dir.join(p), "ENV-BYTES\n").unwrap();
    }
    let elsewhere = tempfile::tempdir().unwrap();
    fs::write(elsewhere.path().join(".env"), "ENV-BYTES\n").unwrap();
    let Some(dmn) = f.daemon() else { return };
    let lsm = lsm_attached(&dmn);
    let probe = probe();
    let want = if lsm { Layer::Lsm } else { Layer::Fanotify };
    for (name, path) in [
        ("n-here", format!("{d}/app/.env")),
        ("n-below", format!("{d}/app/svc/.env")),
        ("n-above", format!("{d}/.env")),
    ] {
        let out = dmn.run_profile("names", name, &work, &[probe, "read", &path]);
        assert_eq!(verdict(&out), "errno 1", "{name}: {out:?}");
        let ev = blocked(&dmn, name);
        assert_eq!(layer_of(&ev), want, "{name}: {ev:?}");
        assert!(
            ev.decision
                .as_ref()
                .unwrap()
                .rule
                .ends_with("(files.deny[0])"),
            "{ev:?}"
        );
    }
    // Elsewhere, and made during the session (by someone outside it, once it runs): the
    // fallback (or BPF-LSM).
    let judged_by_name = |name: &str, out: &Output| {
        if lsm {
            assert_eq!(verdict(out), "errno 1", "{name}: {out:?}");
        } else {
            assert_eq!(out.status.signal(), Some(9), "{name}: {out:?}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("LEAK"),
                "{out:?}"
            );
        }
    };
    let other = elsewhere.path().join(".env").display().to_string();
    let out = dmn.run_profile("names", "n-elsewhere", &work, &[probe, "read", &other]);
    judged_by_name("n-elsewhere", &out);
    let late = format!("{d}/app/late.d/.env");
    fs::create_dir_all(work.join("late.d")).unwrap();
    let script = format!("while [ ! -e {late} ]; do sleep 0.05; done; exec {probe} read {late}");
    let child = dmn
        .cli()
        .args([
            "run",
            "--profile",
            "names",
            "--session-name",
            "n-late",
            "--",
        ])
        .args(["sh", "-c", &script])
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dmn.sessions().iter().any(|s| s.name == "n-late") {
        assert!(start.elapsed() < patience(), "the session never started");
        thread::sleep(Duration::from_millis(50));
    }
    fs::write(&late, "ENV-BYTES\n").unwrap();
    judged_by_name("n-late", &child.wait_with_output().unwrap());
    // A new session in the directory finds the file made during the last one.
    let out = dmn.run_profile("names", "n-again", &work, &[probe, "read", &late]);
    assert_eq!(verdict(&out), "errno 1", "n-again: {out:?}");
    assert_eq!(layer_of(&blocked(&dmn, "n-again")), want);
}
