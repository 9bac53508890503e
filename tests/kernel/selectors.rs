//! Enrolment by selector: a program a profile's `match:` names, started by a process
//! outside every session (here: the test itself, an unrelated parent), is put into a new
//! session by the kernel at its exec, before its first instruction; its children inherit
//! it; what no selector names is untouched; a cgroup selector covers a cgroup created
//! after the profiles were loaded; a reload adds selectors for new execs.

use agentwarden::session::Enrolment;

use crate::support::*;

/// Writes profile `name` into `rules` with `body` after the header.
fn profile(rules: &Path, name: &str, mode: &str, body: &str) {
    let text = format!(
        "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n{body}"
    );
    fs::write(rules.join(format!("{name}.yaml")), text).unwrap();
}

/// The line of `needle` in the profile file (the selector's place).
fn line_of(rules: &Path, name: &str, needle: &str) -> usize {
    let text = fs::read_to_string(rules.join(format!("{name}.yaml"))).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Runs `cmd` from the test, outside every session; its output. Without the test
/// harness's library path: the dynamic loader's first open is then its cache.
fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output_within()
}

/// Sessions the selectors started, oldest first.
fn selector_sessions(d: &Daemon) -> Vec<agentwarden::session::SessionView> {
    let mut s: Vec<_> = d
        .sessions()
        .into_iter()
        .filter(|s| s.enrolment == Enrolment::Selector)
        .collect();
    s.sort_by(|a, b| a.started.cmp(&b.started));
    s
}

/// Waits until `n` selector sessions exist.
fn wait_sessions(d: &Daemon, n: usize) -> Vec<agentwarden::session::SessionView> {
    let start = Instant::now();
    loop {
        let s = selector_sessions(d);
        if s.len() >= n {
            return s;
        }
        assert!(
            start.elapsed() < patience(),
            "{} selector sessions, wanted {n}:\n{}",
            s.len(),
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A program named by its executable, and a script named by its path under an
/// interpreter (`dash …/task.sh`), each started by the test: enrolled at their exec,
/// the first open in the session is the dynamic loader's (nothing ran unwatched), the
/// children inherit the session and the profile's `block` refuses them (EPERM), and the
/// audit trail names the selector. The same interpreter with another script, and the
/// real `dash`, are untouched: they read what the profile denies.
#[test]
fn a_program_a_selector_names_is_enrolled_before_its_first_instruction() {
    let fx = PathFixture::new();
    let d = fx.dir.clone();
    fs::copy("/usr/bin/dash", d.join("bin/agent")).unwrap();
    let task_dir = d.join("sel-task");
    fs::create_dir_all(&task_dir).unwrap();
    let script = format!("cat {0}/ok.txt; cat {0}/canary; echo rc=$?\n", d.display());
    fs::write(task_dir.join("task.sh"), &script).unwrap();
    fs::write(d.join("other.sh"), &script).unwrap();
    let dash = fs::canonicalize("/bin/sh").unwrap();
    let dash = if dash.ends_with("dash") {
        dash
    } else {
        PathBuf::from("/usr/bin/dash")
    };
    profile(
        fx.rules.path(),
        "sel-exe",
        "enforce",
        &format!(
            "match:\n  - exe: {d}/bin/agent\n  - exe: {dash}\n    argv: [\"**/sel-task/task.sh\"]\n\
             files:\n  deny: [{d}/canary]\n  on_violation: block\n",
            d = d.display(),
            dash = dash.display()
        ),
    );
    let Some(dm) = fx.daemon() else { return };

    // 1. The executable.
    let out = run(Command::new(d.join("bin/agent")).args(["-c", &script]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fine"), "{stdout}");
    assert!(stdout.contains("rc=1"), "the canary was read: {stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_sessions(&dm, 1);
    let first = &s[0];
    assert_eq!(first.profile, "sel-exe");
    let line = line_of(fx.rules.path(), "sel-exe", "bin/agent");
    assert!(
        first
            .selector
            .as_deref()
            .is_some_and(|x| x.ends_with(&format!("sel-exe.yaml:{line} (match[0])"))),
        "{first:?}"
    );
    let evs = dm.wait_for(&first.id, "the canary's refusal", |evs| {
        with_action(evs, Action::Blocked).next().is_some()
    });
    let root = first.root_pid;
    // The root's first actions: its start, its exec, then the loader's first open.
    let mine: Vec<&Event> = evs
        .iter()
        .filter(|e| e.process.as_ref().is_some_and(|p| p.tgid == root))
        .collect();
    assert_eq!(mine[0].kind(), EventKind::SessionStart, "{}", dump(&evs));
    assert_eq!(
        mine[1].exec().map(|x| x.path.clone()),
        Some(d.join("bin/agent").display().to_string()),
        "{}",
        dump(&evs)
    );
    let first_open = mine.iter().find_map(|e| e.open()).expect("an open");
    assert_eq!(first_open.path, "/etc/ld.so.cache", "{}", dump(&evs));
    // Its children (the two `cat`s) are in the session; the denied read was refused.
    let (ok_txt, canary) = (d.join("ok.txt"), d.join("canary"));
    let ok = opens_of(&evs, &ok_txt).next().expect("ok.txt");
    assert_ne!(tgid(ok), root, "ok.txt was read by a child");
    let refused = opens_of(&evs, &canary)
        .find(|e| e.decision.is_some())
        .expect("the canary's decision");
    assert_eq!(refused.decision.as_ref().unwrap().action, Action::Blocked);
    assert_ne!(tgid(refused), root);

    // 2. What no selector names is untouched: the real dash, and the interpreter with
    // another script, read the canary.
    for args in [
        vec!["-c".to_owned(), script.clone()],
        vec![d.join("other.sh").display().to_string()],
    ] {
        let out = run(Command::new(&dash).args(&args));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("CANARY-BYTES") && stdout.contains("rc=0"),
            "{stdout}"
        );
    }
    assert_eq!(
        selector_sessions(&dm).len(),
        1,
        "{:?}",
        selector_sessions(&dm)
    );

    // 3. The script under its interpreter: enrolled by the interpreter's selector.
    let out = run(Command::new(&dash).arg(task_dir.join("task.sh")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rc=1"), "the canary was read: {stdout}");
    let s = wait_sessions(&dm, 2);
    assert!(
        s[1].selector
            .as_deref()
            .is_some_and(|x| x.ends_with("(match[1])")),
        "{:?}",
        s[1]
    );

    // The audit trail: each session's row says how it was enrolled and by which
    // selector (the writer commits in batches: polled).
    let db = rusqlite::Connection::open(dm.db()).unwrap();
    let start = Instant::now();
    let rows = loop {
        let rows: Vec<(String, String)> = db
            .prepare("SELECT enrolment, selector FROM sessions ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        if rows.len() >= 2 || start.elapsed() > patience() {
            break rows;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|(e, _)| e == "selector"), "{rows:?}");
    assert!(
        rows[0].1.ends_with(&format!(":{line} (match[0])")),
        "{rows:?}"
    );
    let st: StatusReport = dm.json(&["status", "--json"]);
    let enrolments = st
        .kernel_counters
        .iter()
        .find(|c| c.name == "selector_enrolments")
        .map_or(0, |c| c.total);
    assert_eq!(enrolments, 2);
}

/// A cgroup created by a test, removed (after its processes) when dropped.
struct CgroupDir(PathBuf);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(self.0.join("unit"));
        let _ = fs::remove_dir(&self.0);
    }
}

fn cgroup2_mount() -> PathBuf {
    agentwarden::probe::cgroup2_mount().expect("a cgroup2 mount")
}

/// A selector naming a cgroup that does not exist when the profiles load (a unit or
/// container started later): the kernel learns the cgroup's id when it is created, and
/// a program started in it is enrolled. A profile with a new selector, added by a
/// reload, enrols the next exec of what it names and not the one before.
#[test]
fn a_cgroup_selector_covers_a_cgroup_created_later_and_a_reload_adds_selectors() {
    let fx = PathFixture::new();
    let d = fx.dir.clone();
    let name = format!("agentwarden-test-{}", std::process::id());
    let cg = cgroup2_mount().join(&name);
    profile(
        fx.rules.path(),
        "sel-cg",
        "monitor",
        &format!("match:\n  - cgroup: /{name}/unit\n"),
    );
    let Some(dm) = fx.daemon() else { return };
    let _cleanup = CgroupDir(cg.clone());
    fs::create_dir_all(cg.join("unit")).unwrap();
    let procs = cg.join("unit/cgroup.procs");
    let out = run(Command::new("/bin/sh").args([
        "-c",
        &format!(
            "echo $$ > {}; exec cat {}/ok.txt",
            procs.display(),
            d.display()
        ),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fine"));
    let s = wait_sessions(&dm, 1);
    assert_eq!(s[0].profile, "sel-cg");
    let evs = dm.wait_for(&s[0].id, "the open of ok.txt", |evs| {
        opens_of(evs, &d.join("ok.txt")).next().is_some()
    });
    assert!(
        evs.iter()
            .any(|e| e.exec().is_some_and(|x| x.path.ends_with("/cat"))),
        "{}",
        dump(&evs)
    );

    // A selector a reload adds: the exec before it is not enrolled, the one after is.
    fs::copy("/usr/bin/cat", d.join("bin/agent2")).unwrap();
    let agent2 = d.join("bin/agent2");
    let _ = run(Command::new(&agent2).arg(d.join("ok.txt")));
    profile(
        fx.rules.path(),
        "sel-new",
        "monitor",
        &format!("match:\n  - exe: {}\n", agent2.display()),
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(selector_sessions(&dm).len(), 1);
    dm.reload();
    let _ = run(Command::new(&agent2).arg(d.join("ok.txt")));
    let s = wait_sessions(&dm, 2);
    assert_eq!(s[1].profile, "sel-new");
    assert_eq!(s.len(), 2);
}
