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
