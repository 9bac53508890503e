//! Claude Code (npm `@anthropic-ai/claude-code`) under `claude-code`, driven through the
//! Anthropic Messages API.

use super::*;

fn run() -> Result<AgentRun, String> {
    let claude = installed("claude-code", "node_modules/.bin/claude")?;
    let w = World::new(0);
    // Its Read tool runs in the agent's own process.
    let (steps, script) = hooked_script(
        &w,
        |key| serde_json::json!({ "tool": "Read", "input": { "file_path": key } }),
    );
    let model = ModelServer::start(&w.root, &script);
    let out = w
        .run("claude-code", "claude-e2e")
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", model.port),
        )
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .arg(claude)
        .args(["-p", "run the scripted commands"])
        .args(["--allowedTools", "Bash", "Read"])
        .args(["--output-format", "json", "--no-session-persistence"])
        .output_within();
    Ok(AgentRun::collect_model(
        w,
        "claude-code",
        "claude-e2e",
        steps,
        out,
        &model,
    ))
}

agent_claims!("Claude Code", run);

/// Claude Code reports the run as a success, with no step refused by its own
/// permission system but the one agentwarden's hook refused (every other refusal was
/// the kernel's), and its own read failed on the refusal's errno.
#[test]
fn it_reports_success_and_was_told_why() {
    let Some(r) = the_run() else { return };
    let result: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("claude json");
    assert_eq!(result["result"], "done", "{result}");
    assert_eq!(result["is_error"], false, "{result}");
    // The one call refused before it ran is the hook's: agentwarden's `tools:` rule.
    let denials: Vec<&str> = result["permission_denials"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["tool_input"]["command"].as_str())
        .collect();
    assert_eq!(denials, [DENIED_TOOL], "{result}");
    let own = &r.result(Step::OwnReadKey).1;
    assert!(
        own.contains("EPERM") || own.contains("not permitted"),
        "{own}"
    );
}

/// The session's audit chain verifies; editing the row of the key read makes
/// verification fail naming that row.
#[test]
fn the_audit_chain_verifies_and_names_an_edited_row() {
    let Some(r) = the_run() else { return };
    let (_store, db) = r.store_copy();
    let verify = || {
        Command::new(bin())
            .args(["audit", "verify", "--db"])
            .arg(&db)
            .output_within()
    };
    let v = verify();
    assert!(v.status.success(), "{v:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM actions WHERE kind = 'open' AND path = ?1",
            [&r.key],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE actions SET path = '/tmp/nothing-to-see' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(conn);
    let v = verify();
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&format!("(actions row seq={seq}) was edited")),
        "{v:?}"
    );
}

hook_claims!();

/// `profile learn` on the recorded session drafts a profile that lints, that replays
/// the session without denying anything it performed, and that denies its credential
/// read (and its other refusals) again; `profile diff` against the shipped profile
/// judges the same session under both.
#[test]
fn a_profile_learned_from_its_session_lints_replays_clean_and_denies_the_key() {
    let Some(r) = the_run() else { return };
    let (dir, db) = r.store_copy();
    // The run's user (whose home `~` was) is gone by now: name the home.
    let home = Path::new(&r.key).parent().unwrap().parent().unwrap();
    let sessions = |c: &mut Command| {
        c.arg("--db")
            .arg(&db)
            .args(["--agent", "claude-code", "--home"])
            .arg(home);
    };
    let mut learn = Command::new(bin());
    learn.args(["profile", "learn"]);
    sessions(&mut learn);
    let out = learn.output_within();
    assert!(out.status.success(), "{out:?}");
    let draft = dir.path().join("draft.yaml");
    fs::write(&draft, &out.stdout).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("name: claude-code-learned")
            && text.contains("mode: monitor")
            && text.contains("TODO: who answers")
            && text.contains("\"~/.ssh/**\""),
        "{text}"
    );
    let lint = Command::new(bin())
        .args(["profile", "lint"])
        .arg(&draft)
        .output_within();
    assert!(lint.status.success(), "{lint:?}\n{text}");
    let mut replay = Command::new(bin());
    replay.args(["profile", "replay"]).arg(&draft);
    sessions(&mut replay);
    let out = replay.output_within();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{text}");
    assert!(
        shown.contains("0 action(s) the sessions performed would be denied"),
        "{shown}"
    );
    // The key read, refused in the session, is denied again by the draft's rule.
    let key_line = shown
        .lines()
        .find(|l| l.contains("denies") && l.contains(&format!("read {}", r.key)))
        .unwrap_or_else(|| panic!("the key read is not denied:\n{shown}\n{text}"));
    assert!(key_line.contains("files.deny["), "{key_line}");
    // The shipped profile against the draft, over the same session.
    let mut diff = Command::new(bin());
    diff.args(["profile", "diff", "claude-code"]).arg(&draft);
    sessions(&mut diff);
    let out = diff.output_within();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains("+ files.default: deny")
            && shown.contains("- files.default: allow")
            && shown.contains("against 1 recorded session(s) of claude-code")
            && shown.contains("this change would have denied 0 action(s) claude-code allowed"),
        "{shown}"
    );
}

/// Drift with the real agent. Ten Claude Code sessions under a profile of their own,
/// one after another in the same project, do the same work (write and read back notes,
/// try the key, run python against a local service, list the project): their recorded
/// sessions make the baseline of the agent and its principal. An eleventh like them
/// draws no finding; a twelfth that also runs `whoami`, reads a file under `/opt`,
/// reaches the foreign host and tries the key five times draws exactly those four
/// findings, each with the actions' audit rows as its evidence.
#[test]
fn ten_sessions_make_a_baseline_and_a_drifting_one_draws_exactly_its_findings() {
    let claude = match installed("claude-code", "node_modules/.bin/claude") {
        Ok(p) => p,
        Err(why) => return skip(&why),
    };
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("claude-drift.yaml"),
        "name: claude-drift\ndescription: Claude Code, for the drift test\n\
         owners: { business: Research, technical: Platform security }\nmode: enforce\n\
         hooks: claude-code\nfiles:\n  deny: [\"~/.ssh/**\"]\n",
    )
    .unwrap();
    let w = World::with(
        10,
        &[
            "--rules-dir",
            rules.path().to_str().unwrap(),
            "--drift-interval",
            "300ms",
            "--drift-min-sessions",
            "10",
        ],
    );
    let outside_dir = PathBuf::from(format!("/opt/aw-drift-claude-{}", std::process::id()));
    fs::create_dir_all(&outside_dir).unwrap();
    fs::set_permissions(&outside_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let _outside = RemovedOnDrop(outside_dir.clone());
    let outside = outside_dir.join("data.csv");
    fs::write(&outside, "a,b\n").unwrap();
    let commands = w.root.join("commands.json");
    fs::write(&commands, "[]").unwrap();
    let model = ModelServer::start_with_file(&w.root, &commands);
    let connect = |to: &[(&str, u16)]| {
        let calls: Vec<String> = to
            .iter()
            .map(|(a, p)| format!("socket.create_connection(('{a}', {p}), timeout=5).close()"))
            .collect();
        format!("python3 -c \"import socket; {}\"", calls.join("; "))
    };
    let usual = vec![
        "echo hello-from-agent > notes.txt && cat notes.txt".to_owned(),
        "cat ~/.ssh/id_rsa".to_owned(),
        connect(&[("127.0.0.1", model.port)]),
        "ls -l".to_owned(),
    ];
    let mut drifting = usual.clone();
    drifting[2] = connect(&[("127.0.0.1", model.port), (&w.foreign.addr, 8080)]);
    drifting.extend([
        "whoami".to_owned(),
        format!("cat {}", outside.display()),
        "for i in 1 2 3 4; do cat ~/.ssh/id_rsa; done; true".to_owned(),
    ]);
    let session = |i: usize, steps: &[String]| {
        fs::write(&commands, serde_json::to_string(steps).unwrap()).unwrap();
        let name = format!("claude-drift-{i}");
        let out = w
            .run("claude-drift", &name)
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", model.port),
            )
            .env("ANTHROPIC_API_KEY", "sk-test")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", "1")
            .arg(&claude)
            .args(["-p", "run the scripted commands"])
            .args(["--allowedTools", "Bash"])
            .args(["--output-format", "json", "--no-session-persistence"])
            .output_within();
        assert!(out.status.success(), "{name}: {out:?}");
        name
    };
    let learned = |sessions: u64| w.d.baseline("claude-drift", &w.user.name, sessions);
    for i in 0..10 {
        session(i, &usual);
    }
    let b = learned(10);
    assert_eq!(b["tools"]["Bash"], 10, "{b:#}");
    assert_eq!(b["destinations"]["loopback"], 10, "{b:#}");
    let drifts = |name: &str| -> Vec<agentwarden::event::DriftInfo> {
        w.d.events(Some(name))
            .into_iter()
            .filter_map(|e| match e.body {
                Body::Drift(x) => Some(*x),
                _ => None,
            })
            .collect()
    };
    let normal = session(10, &usual);
    learned(11);
    assert_eq!(drifts(&normal), [], "the usual work drew findings:\n{b:#}");
    let drifted = session(11, &drifting);
    let start = Instant::now();
    let found = loop {
        // Judged whole at its end: then not learned.
        let found = drifts(&drifted);
        if found.len() >= 4
            && w.d
                .events(Some(&drifted))
                .iter()
                .any(|e| e.kind() == EventKind::SessionEnd)
        {
            thread::sleep(Duration::from_secs(1));
            break drifts(&drifted);
        }
        assert!(start.elapsed() < patience(), "{found:#?}");
        thread::sleep(Duration::from_millis(200));
    };
    let mut kinds: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.finding.as_str(), f.object.as_str()))
        .collect();
    kinds.sort();
    let (tree, dest) = (
        format!("{}/**", outside_dir.display()),
        format!("{}:8080", w.foreign.addr),
    );
    assert_eq!(
        kinds,
        [
            ("new_destination", dest.as_str()),
            ("new_program", "/usr/bin/whoami"),
            ("read_outside_trees", tree.as_str()),
            ("repeated_denial", "open ~/.ssh/id_rsa"),
        ],
        "{found:#?}\nbaseline: {b:#}"
    );
    let conn = rusqlite::Connection::open(w.d.db()).unwrap();
    for f in &found {
        assert_eq!(f.baseline.sessions, 11, "{f:?}");
        for seq in &f.evidence {
            let (kind, session): (String, String) = conn
                .query_row(
                    "SELECT kind, session_name FROM audit_log WHERE seq = ?1",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(session, drifted, "{f:?}");
            assert!(
                ["exec", "open", "connect", "net_decision"].contains(&kind.as_str()),
                "{f:?}: {kind}"
            );
        }
    }
}
