//! Exec and file rules decided in the kernel: BPF-LSM refusals where it runs, the signal
//! layer elsewhere, monitor and alert recorded, inode bindings across renames and links.

use crate::support::*;

/// The BPF-LSM layer: where the kernel runs the `bpf` LSM (the VM tier boots with
/// `lsm=...,bpf`), `execve` in a `lockdown` session fails with EPERM before it runs while
/// the same exec outside succeeds. Elsewhere the profile is refused at enrolment, naming
/// the missing layer, and the agent never runs.
#[test]
fn lockdown_exec_is_denied_by_bpf_lsm_or_refused_without_it() {
    let Some(d) = Daemon::start() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    let lsm = st
        .programs
        .iter()
        .find(|p| p.name == "bprm_check_security")
        .expect("lsm row");
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    let touch = format!("/usr/bin/touch {}", marker.display());
    let out = d.run_profile("lockdown", "lock", work.path(), &["/bin/sh", "-c", &touch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!marker.exists(), "a lockdown agent executed a program");
    if std::env::var("AGENTWARDEN_EXPECT_LSM").is_ok_and(|v| v == "1") {
        // The VM tier boots with lsm=...,bpf: the layer must be there.
        assert!(
            st.host.bpf_lsm_active,
            "BPF-LSM not active: {}",
            st.host.active_lsms
        );
    }
    if st.host.bpf_lsm_active {
        assert_eq!(lsm.state, "attached", "{lsm:?}");
        assert_eq!(out.status.code(), Some(126), "{err}");
        assert!(
            err.contains("Operation not permitted"),
            "execve must fail with EPERM: {err}"
        );
        let outside = Command::new("/bin/sh")
            .args(["-c", &touch])
            .status()
            .unwrap();
        assert!(
            outside.success() && marker.exists(),
            "exec outside a session is untouched"
        );
        let st: StatusReport = d.json(&["status", "--json"]);
        let denied = st
            .kernel_counters
            .iter()
            .find(|c| c.name == "lsm_exec_denied")
            .unwrap();
        assert!(denied.total >= 1, "{denied:?}");
        println!(
            "bpf-lsm deny took effect on {}: execve in session -> EPERM, outside -> ok",
            st.host.kernel_release
        );
    } else {
        assert_eq!(lsm.state, "left out");
        assert!(
            lsm.reason
                .as_deref()
                .unwrap_or("")
                .contains("needs BPF-LSM"),
            "{lsm:?}"
        );
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("needs the bprm_check_security program"),
            "{err}"
        );
    }
}

/// Exec and file rules with `on_violation: alert` are judged on the kernel-resolved paths
/// and recorded as alerts, never acted on.
#[test]
fn exec_and_file_rules_are_judged_and_recorded_as_alerts() {
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    fs::create_dir_all(dir.join("secret")).unwrap();
    fs::write(dir.join("secret/key"), "k").unwrap();
    fs::write(dir.join("canary"), "c").unwrap();
    symlink("canary", dir.join("alias")).unwrap();
    let od = fs::canonicalize("/usr/bin/od").unwrap();
    let rules = tempfile::tempdir().unwrap();
    let profile = format!(
        "name: watch\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
         exec:\n  deny: [{od}]\n  on_violation: alert\nfiles:\n  deny:\n    - {d}/secret/**\n    - {d}/canary\n    - /**/*.pem\n  on_violation: alert\n",
        od = od.display(),
        d = dir.display()
    );
    fs::write(rules.path().join("watch.yaml"), profile).unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let script = "cat alias secret/../secret/key; od -c /dev/null >/dev/null";
    let out = d.run_profile("watch", "watch", &dir, &["bash", "-c", script]);
    assert!(out.status.success(), "alerts never act: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ck");
    let sid = d.session("watch").id;
    let evs = d.wait_for(&sid, "judged events", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let decision_of = |path: &Path, kind: &str| {
        let p = path.to_string_lossy().into_owned();
        evs.iter()
            .find(|e| {
                e.kind().as_str() == kind
                    && (e.open().is_some_and(|o| o.path == p)
                        || e.exec().is_some_and(|x| x.path == p))
            })
            .and_then(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("no {kind} of {}:\n{}", path.display(), dump(&evs)))
    };
    let canary = decision_of(&dir.join("canary"), "open");
    assert_eq!(
        (canary.decision.as_str(), canary.action.as_str()),
        ("deny", "alerted")
    );
    assert_eq!(canary.enforced_by, Layer::None);
    assert!(
        canary.rule.ends_with("watch.yaml:11 (files.deny[1])"),
        "{canary:?}"
    );
    let key = decision_of(&dir.join("secret/key"), "open");
    assert!(
        key.rule.ends_with("(files.deny[0])") && key.action == Action::Alerted,
        "{key:?}"
    );
    let odx = decision_of(&od, "exec");
    assert!(
        odx.rule.ends_with("watch.yaml:6 (exec.deny[0])") && odx.action == Action::Alerted,
        "{odx:?}"
    );
    let cat = decision_of(&fs::canonicalize("/bin/cat").unwrap(), "exec");
    assert_eq!(
        (cat.decision.as_str(), cat.rule.as_str()),
        ("allow", "exec.default")
    );
}

/// A re-binding of the deny rules (here forced by SIGHUP; the daemon also does it every
/// 10 s) after a denied program was renamed keeps it denied: the rule's path names no
/// file any more, but the program still exists under its new name. Once its last name is
/// gone, the binding goes too.
#[test]
fn a_renamed_denied_program_stays_denied_after_the_rules_are_bound_again() {
    let f = PathFixture::new();
    f.profile("rebind", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let dir = &f.dir;
    // The rules are bound for a session owner at their first session.
    assert!(
        d.run_profile("rebind", "rb0", dir, &["true"])
            .status
            .success()
    );
    fs::rename(dir.join("bin/tool"), dir.join("bin/renamed")).unwrap();
    d.reload();
    let out = d.run_profile("rebind", "rb", dir, &["bin/renamed", "-c", "ok.txt"]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("f   i   n   e"));
    // The same program copied to a new file (another inode) is the denied one by content:
    // the refusal layer matches it by digest.
    fs::copy(dir.join("bin/renamed"), dir.join("bin/copy")).unwrap();
    let out = d.run_profile("rebind", "rb2", dir, &["bin/copy", "-c", "ok.txt"]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
}

/// `kill` ends the process before it returns to user mode: a reader of the canary never
/// holds a byte, through a symlink, a relative `..` path, a file-name rule and a hard link,
/// and a denied program dies at exec, also renamed or hard-linked. Where BPF-LSM runs the
/// open or exec is refused as well (`enforced_by: lsm`); elsewhere the fanotify layer
/// refuses and kills for the objects the rules name (`fanotify`), and the tracepoint's
/// signal does it for a name pattern (`signal`).
#[test]
fn denied_files_and_programs_are_killed_before_returning_to_user_mode() {
    let f = PathFixture::new();
    f.profile("killer", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let lsm = lsm_attached(&d);
    let layer = if lsm { "lsm" } else { "fanotify" };
    let dir = &f.dir;
    let run = |name: &str, cwd: &Path, args: &[&str]| d.run_profile("killer", name, cwd, args);
    for (name, cwd, args) in [
        ("k-symlink", dir.clone(), vec!["cat", "alias"]),
        ("k-dotdot", dir.join("secret"), vec!["cat", "../secret/key"]),
        ("k-name", dir.join("app"), vec!["cat", ".env-test"]),
        ("k-hardlink", dir.join("app"), vec!["cat", "hardlink"]),
        ("k-exec", dir.clone(), vec!["bin/tool", "-c", "/dev/null"]),
        (
            "k-renamed",
            dir.clone(),
            vec![
                "sh",
                "-c",
                "mv bin/tool bin/renamed && exec bin/renamed -c ok.txt",
            ],
        ),
        (
            "k-exec-link",
            dir.clone(),
            vec![
                "sh",
                "-c",
                "ln bin/renamed linked && exec ./linked -c ok.txt",
            ],
        ),
    ] {
        let out = run(name, &cwd, &args);
        assert_eq!(out.status.signal(), Some(9), "{name}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("BYTES") && !stdout.contains("f   i   n   e"),
            "{name}: a killed process produced output: {stdout}"
        );
    }
    // An O_PATH handle gives no access to the content (Claude Code resolves the paths a
    // command names this way): not a violation.
    let opath = run(
        "k-opath",
        dir,
        &[
            "/usr/bin/python3",
            "-c",
            "import os; os.close(os.open('canary', os.O_PATH)); print('opath-ok')",
        ],
    );
    assert!(opath.status.success(), "{opath:?}");
    let ok = run("k-ok", dir, &["cat", "ok.txt"]);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "fine\n");
    // Outside every session the same file reads normally.
    let outside = Command::new("cat").arg(dir.join("alias")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout), "CANARY-BYTES\n");

    let killed_in = |session: &str, path: &str| {
        let sid = d.session(session).id;
        let evs = d.wait_for(&sid, "the kill decision", |evs| {
            evs.iter().any(|e| {
                e.decision
                    .as_ref()
                    .is_some_and(|x| x.action == Action::Killed)
            })
        });
        let ev = evs
            .iter()
            .find(|e| {
                e.decision
                    .as_ref()
                    .is_some_and(|x| x.action == Action::Killed)
            })
            .unwrap();
        let seen = ev
            .open()
            .map(|o| o.path.clone())
            .or_else(|| ev.exec().map(|x| x.path.clone()))
            .unwrap_or_default();
        assert_eq!(seen, path, "{session}:\n{}", dump(&evs));
        let exit = evs
            .iter()
            .filter(|e| tgid(e) == tgid(ev))
            .find_map(|e| e.exit().cloned())
            .expect("exit of the killed process");
        assert_eq!(exit.signal, Some(9));
        ev.decision.clone().unwrap()
    };
    let d_of = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let canary = killed_in("k-symlink", &d_of("canary"));
    assert_eq!(
        (canary.decision.as_str(), canary.enforced_by.as_str()),
        ("deny", layer)
    );
    assert!(
        canary.rule.ends_with("killer.yaml:10 (files.deny[0])"),
        "{canary:?}"
    );
    // A file a name pattern matches in the session's directory was bound when the
    // session enrolled there: marked like the canary.
    let name_rule = killed_in("k-name", &d_of("app/.env-test"));
    assert_eq!(name_rule.enforced_by.as_str(), layer, "{name_rule:?}");
    let link = killed_in("k-hardlink", &d_of("app/hardlink"));
    assert!(link.rule.ends_with("(files.deny[0])"), "by inode: {link:?}");
    let renamed = killed_in("k-renamed", &d_of("bin/renamed"));
    assert!(
        renamed.rule.ends_with("killer.yaml:6 (exec.deny[0])"),
        "{renamed:?}"
    );
    killed_in("k-exec-link", &d_of("linked"));
}

/// `block` refuses the open or exec with EPERM before it happens where BPF-LSM runs (the
/// VM tier), holding against a symlink, a `..` path, a file-name rule, a hard link and a
/// renamed program; the event names the rule and `lsm`. Where BPF-LSM is missing the
/// profile is refused at enrolment, naming the missing hook. Monitor mode records only.
#[test]
fn denied_opens_and_execs_are_blocked_with_eperm_by_bpf_lsm_or_refused_without_it() {
    let f = PathFixture::new();
    f.profile("blocker", "enforce", "on_violation: block");
    f.profile("watcher", "monitor", "on_violation: block");
    // BPF-LSM alone: the refusal layer (asked before bprm_check_security about an exec)
    // is tested in `routes`.
    let Some(d) = f.daemon_with(&["--no-refusal"]) else {
        return;
    };
    let dir = &f.dir;
    let specs = [
        "r:symlink=alias",
        "r:dotdot=secret/../secret/key",
        "r:name=app/.env-test",
        "r:hardlink=app/hardlink",
        "r:allowed=ok.txt",
        "x:exec=bin/tool",
        "x:allowed_exec=/usr/bin/true",
    ];
    let probe = |profile: &str, name: &str| {
        let mut args = vec!["/usr/bin/python3", "-c", PATH_PROBE];
        args.extend(specs);
        d.run_profile(profile, name, dir, &args)
    };
    if !lsm_attached(&d) {
        let out = probe("blocker", "b-refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("needs the bprm_check_security") || err.contains("needs the file_open"),
            "{err}"
        );
        assert!(
            err.contains("fallback: kill"),
            "the way out is named: {err}"
        );
        println!("no BPF-LSM here: a blocking profile is refused at enrolment");
    } else {
        let out = probe("blocker", "b-lsm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for line in [
            "symlink=1",
            "dotdot=1",
            "name=1",
            "hardlink=1",
            "allowed=ok",
            "exec=1",
            "allowed_exec=ok",
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "want {line} (1 = EPERM) in:\n{stdout}"
            );
        }
        let sid = d.session("b-lsm").id;
        let evs = d.wait_for(&sid, "blocked decisions", |evs| {
            with_action(evs, Action::Blocked).count() >= 5
        });
        let blocked: Vec<_> = with_action(&evs, Action::Blocked).collect();
        for e in &blocked {
            let dec = e.decision.as_ref().unwrap();
            assert_eq!(
                (dec.decision.as_str(), dec.enforced_by.as_str()),
                ("deny", "lsm")
            );
        }
        let canary = dir.join("canary").to_string_lossy().into_owned();
        let on_canary = blocked
            .iter()
            .find(|e| e.open().is_some_and(|o| o.path == canary))
            .unwrap_or_else(|| panic!("no blocked open of the canary:\n{}", dump(&evs)));
        let o = on_canary.open().unwrap();
        assert_eq!(o.result, -1, "EPERM in the event");
        assert!(o.path_resolved);
        let tool = dir.join("bin/tool").to_string_lossy().into_owned();
        assert!(
            blocked
                .iter()
                .any(|e| e.exec().is_some_and(|x| x.path == tool)),
            "no blocked exec of bin/tool:\n{}",
            dump(&evs)
        );
        let st: StatusReport = d.json(&["status", "--json"]);
        let n = |name: &str| {
            st.kernel_counters
                .iter()
                .find(|c| c.name == name)
                .map_or(0, |c| c.total)
        };
        assert!(n("lsm_file_denied") >= 4 && n("lsm_exec_denied") >= 1);
        println!(
            "bpf-lsm file/exec block took effect on {}: open -> EPERM, exec -> EPERM",
            st.host.kernel_release
        );
    }
    // Monitor mode: everything goes through and the would-be decisions are recorded.
    let out = probe("watcher", "b-monitor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["symlink=ok-LEAK", "hardlink=ok-LEAK", "exec=ok"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "monitor must not act: {line}\n{stdout}"
        );
    }
    let sid = d.session("b-monitor").id;
    let evs = d.wait_for(&sid, "alerts", |evs| {
        with_action(evs, Action::Alerted).count() >= 5
    });
    assert!(
        evs.iter()
            .filter_map(|e| e.decision.as_ref())
            .all(|x| x.action != Action::Blocked && x.action != Action::Killed),
        "{}",
        dump(&evs)
    );
}
