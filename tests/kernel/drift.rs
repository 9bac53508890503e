//! Out-of-band drift: baselines learned from recorded sessions, findings on what a
//! session does that its baseline does not contain.

use std::io::{BufRead, BufReader, Write as _};

use agentwarden::event::DriftInfo;

use crate::{agents::ForeignHost, support::*};

const PROFILE: &str = "name: drift-agent
description: a scripted agent for the drift tests
owners: { business: Research, technical: Platform security }
mode: enforce
files:
  deny: [~/.ssh/**]
";

/// A loopback HTTP endpoint that answers 200 to every POST and keeps the bodies.
struct Sink {
    addr: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Sink {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    kept.lock().unwrap().push(v);
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        Self { addr, bodies }
    }
}

/// The scripted agent's work: read its project, list it, note something, ask git, talk
/// to its local service, and try the key once. `extra` is what the drifting session
/// does besides (and then it tries the key five times instead of once).
fn work(service: u16, extra: Option<(&str, &str)>) -> String {
    let connect = |addr: &str, port: u16| {
        format!("socket.create_connection(('{addr}', {port}), timeout=5).close()")
    };
    let mut py = connect("127.0.0.1", service);
    let mut script = String::from(
        "cat README.md > /dev/null; ls -l > /dev/null; echo note >> notes.txt; \
         git --version > /dev/null; ",
    );
    let tries = match extra {
        None => 1,
        Some((outside, foreign)) => {
            script.push_str(&format!(
                "/usr/bin/whoami > /dev/null; cat {outside} > /dev/null; "
            ));
            py.push_str("; ");
            py.push_str(&connect(foreign, 8080));
            5
        }
    };
    script.push_str(&format!("python3 -c \"import socket; {py}\"; "));
    for _ in 0..tries {
        script.push_str("cat ~/.ssh/id_rsa > /dev/null 2>&1; ");
    }
    script.push_str("true");
    script
}

fn metric(addr: &str, line: &str) -> Option<u64> {
    http_get(addr, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

/// The analyser's connection to the store lives in the audit writer's descriptor table,
/// not the daemon's: SQLite gives every connection of a process the descriptors the
/// first one opened, and in another table those numbers are other files (an analyser in
/// the daemon's table closed the runtime's epoll descriptor and mapped what stood under
/// the store's shared memory). `kcmp(KCMP_FILES)` says whether two threads share one.
fn analyser_shares_the_writers_descriptors(d: &Daemon) {
    let pid = d.child.as_ref().unwrap().id();
    let thread_named = |name: &str| -> u32 {
        let start = Instant::now();
        loop {
            for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
                let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.trim() == name {
                    return t.file_name().to_string_lossy().parse().unwrap();
                }
            }
            assert!(
                start.elapsed() < patience(),
                "no thread {name} in the daemon"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    const KCMP_FILES: libc::c_long = 2;
    let same_table = |a: u32, b: u32| -> bool {
        // SAFETY: kcmp(2) with thread ids and no pointers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                a as libc::c_long,
                b as libc::c_long,
                KCMP_FILES,
                0,
                0,
            )
        };
        assert!(r >= 0, "kcmp: {}", std::io::Error::last_os_error());
        r == 0
    };
    let (writer, drift) = (thread_named("audit-writer"), thread_named("drift"));
    assert!(
        same_table(writer, drift),
        "the drift analyser has a descriptor table other than the audit writer's"
    );
    assert!(
        !same_table(pid, drift),
        "the drift analyser shares the daemon's descriptor table"
    );
}

/// Ten sessions of the same scripted agent, each in a project of its own, grow the
/// baseline of its agent and principal. An eleventh that does the usual work in another
/// project draws no finding (and is learned). A twelfth that runs a new program, reads
/// outside the learned trees, reaches a new host and tries the denied key five times
/// draws exactly those four findings, live: each names its evidence (audit rows that
/// are those actions), the baseline (its `baselines` row, in the verified chain) and
/// whom to tell; each is an event, an audit row, an OCSF Detection Finding, a counter
/// and a webhook POST. The drifting session is not learned.
#[test]
fn ten_sessions_make_a_baseline_and_a_drifting_session_draws_exactly_its_four_findings() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(rules.path().join("drift-agent.yaml"), PROFILE).unwrap();
    let sink = Sink::start();
    let hook = format!("http://{}/drift", sink.addr);
    let Some((d, metrics)) = Daemon::start_with_metrics(&[
        "--rules-dir",
        rules.path().to_str().unwrap(),
        "--drift-interval",
        "300ms",
        "--drift-min-sessions",
        "10",
        "--drift-webhook",
        &hook,
    ]) else {
        return;
    };
    analyser_shares_the_writers_descriptors(&d);
    let work_dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(work_dir.path()).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let home = root.join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(home.join(".ssh/id_rsa"), "PRIVATE-KEY\n").unwrap();
    let user = TestUser::create(&format!("aw-drift-{}", std::process::id() % 100_000), &home);
    user.chown(&home);
    // Data no session of the baseline read.
    let outside_dir = PathBuf::from(format!("/opt/aw-drift-{}", std::process::id()));
    fs::create_dir_all(&outside_dir).unwrap();
    let outside = outside_dir.join("data.csv");
    fs::write(&outside, "a,b\n").unwrap();
    fs::set_permissions(&outside_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let _outside = RemovedOnDrop(outside_dir.clone());
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    thread::spawn(move || for _ in service.incoming() {});
    let foreign = ForeignHost::start(crate::agents::host_tag(9));
    let session = |i: usize, script: &str| {
        let project = root.join(format!("project-{i}"));
        fs::create_dir_all(&project).unwrap();
        fs::write(project.join("README.md"), "a project\n").unwrap();
        user.chown(&project);
        let name = format!("drift-{i}");
        let out = d
            .cli()
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .args(["run", "--profile", "drift-agent", "--session-name", &name])
            .args(["--user", &user.name, "--", "/bin/sh", "-c", script])
            .current_dir(&project)
            .stdin(Stdio::null())
            .output_within();
        assert!(out.status.success(), "{name}: {out:?}");
        name
    };
    let baseline = |sessions: u64| d.baseline("drift-agent", &user.name, sessions);
    let usual = work(port, None);
    for i in 0..10 {
        session(i, &usual);
    }
    let b = baseline(10);
    let git = b["programs"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(p, _)| p.ends_with("/git"))
        .map(|(_, n)| n.clone());
    assert_eq!(git, Some(10.into()), "{b:#}");
    assert_eq!(b["reads"]["$PROJECT/**"], 10, "{b:#}");
    assert_eq!(b["destinations"]["loopback"], 10, "{b:#}");
    assert_eq!(b["denials"]["open ~/.ssh/id_rsa"], 1, "{b:#}");

    let normal = session(10, &usual);
    baseline(11);
    let drifts = |s: &str| -> Vec<DriftInfo> {
        d.events(Some(s))
            .into_iter()
            .filter_map(|e| match e.body {
                Body::Drift(x) => Some(*x),
                _ => None,
            })
            .collect()
    };
    assert_eq!(drifts(&normal), [], "the usual work drew findings");

    let drifting = session(
        11,
        &work(
            port,
            Some((outside.to_str().unwrap(), foreign.addr.as_str())),
        ),
    );
    // Judged whole at its end, and withheld from the baseline for its findings.
    let start = Instant::now();
    while metric(
        &metrics,
        "agentwarden_drift_counter_total{counter=\"sessions_withheld\"}",
    ) != Some(1)
    {
        assert!(
            start.elapsed() < patience(),
            "{}",
            http_get(&metrics, "/metrics")
        );
        thread::sleep(Duration::from_millis(200));
    }
    let mut found = drifts(&drifting);
    found.sort_by_key(|f| f.finding);
    let kinds: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.finding.as_str(), f.object.as_str()))
        .collect();
    let tree = format!("{}/**", outside_dir.display());
    let dest = format!("{}:8080", foreign.addr);
    assert_eq!(
        kinds,
        [
            ("new_program", "/usr/bin/whoami"),
            ("read_outside_trees", tree.as_str()),
            ("new_destination", dest.as_str()),
            ("repeated_denial", "open ~/.ssh/id_rsa"),
        ]
    );
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    for f in &found {
        assert_eq!(f.baseline.sessions, 11, "{f:?}");
        assert_eq!(f.baseline.principal.as_deref(), Some(user.name.as_str()));
        let (sessions, agent): (i64, String) = conn
            .query_row(
                "SELECT sessions, agent FROM baselines WHERE seq = ?1",
                [f.baseline.seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("baseline row {}: {e}", f.baseline.seq));
        assert_eq!((sessions, agent.as_str()), (11, "drift-agent"));
        assert_eq!(
            f.notify,
            ["Research", "Platform security", user.name.as_str()]
        );
        assert!(!f.evidence.is_empty(), "{f:?}");
        // The evidence is the session's own actions.
        for seq in &f.evidence {
            let (kind, path, address, decision, session): (
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                String,
            ) = conn
                .query_row(
                    "SELECT kind, path, address, decision, session_name FROM audit_log \
                     WHERE seq = ?1",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap();
            assert_eq!(session, drifting);
            let ok = match f.finding.as_str() {
                "new_program" => kind == "exec" && path.as_deref() == Some("/usr/bin/whoami"),
                "read_outside_trees" => kind == "open" && path.as_deref() == outside.to_str(),
                // The connect, or the network layer's decision on it.
                "new_destination" => {
                    (kind == "connect" || kind == "net_decision")
                        && address.as_deref() == Some(foreign.addr.as_str())
                }
                _ => {
                    kind == "open"
                        && path.as_deref() == home.join(".ssh/id_rsa").to_str()
                        && decision.as_deref() == Some("deny")
                }
            };
            assert!(
                ok,
                "{f:?}: row {seq} is {kind} {path:?} {address:?} {decision:?}"
            );
        }
    }
    // Raised live, at the third try: the earliest an override attempt can be told from a
    // retry; its evidence is the tries so far.
    let denial = &found[3];
    assert_eq!((denial.count, denial.evidence.len()), (3, 3), "{denial:?}");
    // Audit rows in the verified chain, OCSF Detection Findings, counters, webhook.
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE kind = 'drift' AND session_name = ?1",
            [&drifting],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 4);
    drop(conn);
    let verify = d
        .cli()
        .args(["audit", "verify", "--db"])
        .arg(d.db())
        .output_within();
    assert!(verify.status.success(), "{verify:?}");
    let ocsf = d
        .cli()
        .args([
            "audit", "export", "--format", "ocsf", "--kind", "drift", "--db",
        ])
        .arg(d.db())
        .args(["--session", &drifting])
        .output_within();
    let ocsf: Vec<serde_json::Value> = String::from_utf8_lossy(&ocsf.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ocsf.len(), 4, "{ocsf:#?}");
    assert!(
        ocsf.iter().all(|o| o["class_uid"] == 2004
            && o["finding_info"]["types"][0] == "drift"
            && o["severity_id"].as_u64() >= Some(3)),
        "{ocsf:#?}"
    );
    for (finding, severity) in [
        ("new_program", "medium"),
        ("read_outside_trees", "medium"),
        ("new_destination", "medium"),
        ("repeated_denial", "high"),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "agentwarden_drift_findings_total{{finding=\"{finding}\",severity=\"{severity}\"}}"
                )
            ),
            Some(1)
        );
    }
    let posted = sink.bodies.lock().unwrap().clone();
    let mut posted: Vec<&str> = posted
        .iter()
        .filter(|b| b["session"]["name"] == drifting.as_str())
        .filter_map(|b| b["drift"]["finding"].as_str())
        .collect();
    posted.sort();
    assert_eq!(
        posted,
        [
            "new_destination",
            "new_program",
            "read_outside_trees",
            "repeated_denial"
        ]
    );
    // Not learned: the baseline still holds the eleven.
    baseline(11);
}

/// A draft loaded beside the enforcing profile (`shadow_of`) judges every action of the
/// enforcing profile's sessions, and enforces nothing: the file it would deny is read
/// (its content printed) and the program it would deny runs, each action carrying the
/// shadow's `deny` verdict and rule in its event and its audit row; the file only the
/// enforcing profile denies stays refused and carries the shadow's `allow`; an action
/// both allow carries nothing. Counted per shadow profile and verdict.
#[test]
fn a_shadow_profile_records_what_it_would_decide_otherwise_and_enforces_nothing() {
    let dir = PathBuf::from(format!("/opt/aw-shadow-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let _dir = RemovedOnDrop(dir.clone());
    let (shadowed, denied, both) = (
        dir.join("shadowed.txt"),
        dir.join("denied.txt"),
        dir.join("both.txt"),
    );
    fs::write(&shadowed, "SHADOWED-CONTENT\n").unwrap();
    fs::write(&denied, "DENIED-CONTENT\n").unwrap();
    fs::write(&both, "BOTH-CONTENT\n").unwrap();
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("enforcing.yaml"),
        format!(
            "name: shadowed-agent\ndescription: d\nowners: {{ business: b, technical: t }}\n\
             mode: enforce\nfiles:\n  deny: [\"{}\"]\n",
            denied.display()
        ),
    )
    .unwrap();
    fs::write(
        rules.path().join("draft.yaml"),
        format!(
            "name: shadowed-agent-draft\ndescription: d\nowners: {{ business: b, technical: t }}\n\
             mode: monitor\nshadow_of: shadowed-agent\nexec:\n  deny: [/usr/bin/whoami]\n\
             files:\n  deny: [\"{}\"]\n",
            shadowed.display()
        ),
    )
    .unwrap();
    let Some((d, metrics)) =
        Daemon::start_with_metrics(&["--rules-dir", rules.path().to_str().unwrap()])
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "cat {}; /usr/bin/whoami; cat {}; cat {} || echo refused",
        shadowed.display(),
        both.display(),
        denied.display()
    );
    let out = d.run_profile(
        "shadowed-agent",
        "shadowed",
        work.path(),
        &["/bin/sh", "-c", &script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SHADOWED-CONTENT")
            && stdout.contains("BOTH-CONTENT")
            && stdout.contains("root")
            && !stdout.contains("DENIED-CONTENT")
            && stdout.contains("refused"),
        "{out:?}"
    );
    let evs = d.wait_for("shadowed", "the reads", |evs| {
        opens_of(evs, &denied).next().is_some() && opens_of(evs, &both).next().is_some()
    });
    let shadow_of = |e: &Event| -> Vec<(String, Verdict, String)> {
        e.shadow
            .iter()
            .map(|s| (s.profile.clone(), s.decision, s.rule.clone()))
            .collect()
    };
    let one = |evs: &mut dyn Iterator<Item = &Event>, what: &str| -> (String, Verdict, String) {
        let all: Vec<_> = evs.flat_map(&shadow_of).collect();
        assert_eq!(all.len(), 1, "{what}: {all:?}");
        all.into_iter().next().unwrap()
    };
    let (profile, verdict, rule) = one(&mut opens_of(&evs, &shadowed), "the shadowed read");
    assert_eq!(
        (profile.as_str(), verdict),
        ("shadowed-agent-draft", Verdict::Deny)
    );
    assert!(
        rule.contains("draft.yaml:") && rule.contains("(files.deny[0])"),
        "{rule}"
    );
    let mut whoami = evs
        .iter()
        .filter(|e| e.exec().is_some_and(|x| x.path == "/usr/bin/whoami"));
    let (_, verdict, rule) = one(&mut whoami, "whoami");
    assert_eq!(verdict, Verdict::Deny);
    assert!(rule.contains("(exec.deny[0])"), "{rule}");
    let (_, verdict, rule) = one(&mut opens_of(&evs, &denied), "the denied read");
    assert_eq!((verdict, rule.as_str()), (Verdict::Allow, "files.default"));
    assert!(
        opens_of(&evs, &both).all(|e| e.shadow.is_empty()),
        "{}",
        dump(&evs)
    );
    // In the audit row, and counted.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let start = Instant::now();
    let extra = loop {
        let extra: Option<String> = conn
            .query_row(
                "SELECT extra FROM actions WHERE kind = 'open' AND path = ?1",
                [shadowed.to_str().unwrap()],
                |r| r.get(0),
            )
            .ok()
            .flatten();
        if let Some(x) = extra {
            break x;
        }
        assert!(
            start.elapsed() < patience(),
            "no audit row of the shadowed read"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let extra: serde_json::Value = serde_json::from_str(&extra).unwrap();
    assert_eq!(
        extra["shadow"][0]["profile"], "shadowed-agent-draft",
        "{extra}"
    );
    assert_eq!(extra["shadow"][0]["decision"], "deny", "{extra}");
    let denies = metric(
        &metrics,
        "agentwarden_shadow_verdicts_total{profile=\"shadowed-agent-draft\",decision=\"deny\"}",
    );
    assert!(denies >= Some(2), "{}", http_get(&metrics, "/metrics"));
}
