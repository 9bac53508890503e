//! The hook socket's boundaries, with `agentwarden hook` run by real processes: a
//! process in a session reports for its own session only, bad input is refused with a
//! clear error and records nothing, a process outside every session records nothing, and
//! the hook socket cannot administer the daemon. (The agents' own hooks, end to end, are
//! `agents::claude_code` and `agents::codex_cli`.)

use crate::support::*;

/// A Claude Code hook input.
fn input(event: &str, agent_session: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut v = serde_json::json!({
        "session_id": agent_session,
        "hook_event_name": event,
        "prompt_id": "p1",
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string().into_bytes()
}

fn pre(agent_session: &str, id: &str, command: &str) -> Vec<u8> {
    input(
        "PreToolUse",
        agent_session,
        serde_json::json!({"tool_name": "Bash", "tool_input": {"command": command}, "tool_use_id": id}),
    )
}

/// Runs `agentwarden hook claude-code` with `stdin` from a file, in a `run` session named
/// `name` (`None`: outside every session), as a hook started under `run` would be.
fn hook(d: &Daemon, name: Option<&str>, stdin: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    fs::write(&file, stdin).unwrap();
    let sock = d.dir.path().join("hook.sock");
    let script = "exec \"$0\" hook claude-code < \"$1\"";
    let args = ["/bin/sh", "-c", script, bin(), file.to_str().unwrap()];
    match name {
        Some(name) => {
            let mut c = d.cli();
            c.args(["run", "--profile", "demo", "--session-name", name, "--"])
                .args(args)
                .env("AGENTWARDEN_HOOK_SOCKET", &sock)
                .current_dir(dir.path());
            c.output_within()
        }
        None => Command::new(args[0])
            .args(&args[1..])
            .env("AGENTWARDEN_HOOK_SOCKET", &sock)
            .output_within(),
    }
}

fn reported(d: &Daemon) -> Vec<Event> {
    d.events(None)
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind(),
                EventKind::Prompt | EventKind::ToolCall | EventKind::ToolResult
            )
        })
        .collect()
}

/// Truncated JSON, an input over the limit, a report for another agent session, and a
/// report from outside every session: each gets a clear answer and records nothing; a
/// question before a call that cannot be asked refuses the call (exit 2). A good report
/// from the session is recorded for that session.
#[test]
fn bad_hook_input_is_refused_clearly_and_records_nothing() {
    let Some(d) = Daemon::start() else { return };
    let good = pre("agent-1", "toolu_good", "echo ok");
    let out = hook(&d, Some("h-good"), &good);
    assert!(out.status.success(), "{out:?}");
    let calls = reported(&d);
    assert_eq!(calls.len(), 1, "{}", dump(&calls));
    assert_eq!(calls[0].session.name, "h-good");

    // Truncated: a question before a call, under `run`: refused.
    let out = hook(&d, Some("h-trunc"), &good[..good.len() / 2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains("not JSON") && err.contains("nothing was recorded"),
        "{err}"
    );

    // Over the limit (1 MiB): refused before anything is sent.
    let huge = pre("agent-1", "toolu_huge", &"x".repeat(1_100_000));
    let out = hook(&d, Some("h-huge"), &huge);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("larger than 1024 KiB"), "{err}");

    // Another agent session inside one agentwarden session: refused by the daemon.
    let mixed = format!(
        "printf '%s' '{}' | \"$0\" hook claude-code; echo rc=$?; \
         printf '%s' '{}' | \"$0\" hook claude-code; echo rc=$?",
        String::from_utf8(pre("agent-A", "toolu_a", "echo a")).unwrap(),
        String::from_utf8(input(
            "UserPromptSubmit",
            "agent-B",
            serde_json::json!({"prompt": "smuggled"})
        ))
        .unwrap()
    );
    let work = tempfile::tempdir().unwrap();
    let out = d
        .cli()
        .args([
            "run",
            "--profile",
            "demo",
            "--session-name",
            "h-mixed",
            "--",
        ])
        .args(["/bin/sh", "-c", &mixed, bin()])
        .env("AGENTWARDEN_HOOK_SOCKET", d.dir.path().join("hook.sock"))
        .current_dir(work.path())
        .output_within();
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("rc=0") && said.contains("rc=1"),
        "{said}\n{err}"
    );
    assert!(
        err.contains("`agent-B` is not the agent session") && err.contains("nothing was recorded"),
        "{err}"
    );

    // Outside every session: nothing to say, nothing recorded.
    let out = hook(&d, None, &pre("agent-1", "toolu_outside", "echo x"));
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    let calls = reported(&d);
    let ids: Vec<&str> = calls
        .iter()
        .filter_map(|e| match &e.body {
            Body::ToolCall(c) => Some(c.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["toolu_good", "toolu_a"], "{}", dump(&calls));
    assert!(
        !calls.iter().any(|e| matches!(&e.body, Body::Prompt(_))),
        "the smuggled prompt was recorded: {}",
        dump(&calls)
    );
}

/// The hook socket takes hook reports only: a session's process cannot use it to ask
/// for anything else (status, enrolment), and a stopped daemon's hook (no socket) under
/// `run` refuses a call instead of letting it through unchecked.
#[test]
fn the_hook_socket_administers_nothing_and_a_missing_daemon_refuses_calls() {
    let Some(d) = Daemon::start() else { return };
    let sock = d.dir.path().join("hook.sock");
    let work = tempfile::tempdir().unwrap();
    let ask = format!(
        "python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('{}'); \
         s.sendall(b'{{\\\"op\\\":\\\"status\\\"}}\\n'); print(s.recv(4096).decode())\"",
        sock.display()
    );
    let out = d.run_in("h-admin", work.path(), &["/bin/sh", "-c", &ask]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("takes hook reports only"), "{out:?}");
    assert!(!said.contains("daemon_pid"), "{said}");

    // A session's process writing to the socket itself, past the hook command's checks:
    // a request over the limit, one cut short, a report whose input is not the
    // dialect's: each is answered with what is wrong, and nothing is recorded.
    let raw = format!(
        "import socket, sys\n\
         def ask(data):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect('{sock}')\n    \
         try:\n        s.sendall(data)\n        s.shutdown(socket.SHUT_WR)\n    \
         except BrokenPipeError:\n        pass\n    \
         print(s.recv(4096).decode().strip())\n\
         ask(b'{{\"op\":\"hook\",\"dialect\":\"claude-code\",\"input\":\"' + b'x' * (2 << 20))\n\
         ask(b'{{\"op\":\"hook\",\"dialect\":\"claude-code\",\"input\":{{\"session_id\"')\n\
         ask(b'{{\"op\":\"hook\",\"dialect\":\"gemini-cli\",\"input\":{{\"session_id\":\"g\",\"hook_event_name\":\"BeforeTool\"}}}}\\n')\n",
        sock = sock.display()
    );
    let out = d.run_in("h-raw", work.path(), &["/usr/bin/python3", "-c", &raw]);
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert!(
        lines[0].contains("truncated or larger than")
            && lines[1].contains("truncated or larger than"),
        "{said}"
    );
    assert!(
        lines[2].contains("gemini-cli hook input: no `tool_name`; nothing was recorded"),
        "{said}"
    );
    assert!(reported(&d).is_empty(), "{:?}", reported(&d));

    // No daemon on the socket: the question before a call is refused (exit 2).
    let gone = work.path().join("none.sock");
    let file = work.path().join("pre.json");
    fs::write(&file, pre("agent-1", "toolu_x", "echo x")).unwrap();
    let out = Command::new("/bin/sh")
        .args(["-c", "exec \"$0\" hook claude-code < \"$1\"", bin()])
        .arg(&file)
        .env("AGENTWARDEN_HOOK_SOCKET", &gone)
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains("does not answer") && err.contains("tool rules cannot be checked"),
        "{err}"
    );
    // Without `run` (a host-wide install, agentwarden stopped): the agent is let be.
    let out = Command::new("/bin/sh")
        .args([
            "-c",
            "exec \"$0\" hook claude-code --hook-socket \"$2\" < \"$1\"",
            bin(),
        ])
        .arg(&file)
        .arg(&gone)
        .env_remove("AGENTWARDEN_HOOK_SOCKET")
        .output_within();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}

/// What is kept of a prompt follows `daemon --prompts`: by default only its SHA-256 (and
/// length), with `none` neither; the text itself only with `store` (the agents' runs).
#[test]
fn prompts_keep_only_what_the_daemon_is_told_to() {
    use sha2::Digest as _;
    let text = "deploy with the token sk-live-1234";
    let prompt = input(
        "UserPromptSubmit",
        "agent-1",
        serde_json::json!({ "prompt": text }),
    );
    let digest = agentwarden::audit::chain::hex(&sha2::Sha256::digest(text.as_bytes()));
    for (extra, want_sha) in [(&[][..], true), (&["--prompts", "none"][..], false)] {
        let Some(d) = Daemon::start_with(extra) else {
            return;
        };
        let out = hook(&d, Some("h-prompt"), &prompt);
        assert!(out.status.success(), "{out:?}");
        let p = reported(&d)
            .into_iter()
            .find_map(|e| match e.body {
                Body::Prompt(p) => Some(p),
                _ => None,
            })
            .expect("the prompt");
        assert_eq!(p.text, None, "{extra:?}");
        assert_eq!(p.sha256.is_some(), want_sha, "{extra:?}");
        if want_sha {
            assert_eq!(p.sha256.as_deref(), Some(digest.as_str()));
        }
        assert_eq!(p.chars, text.chars().count() as u64);
        // Nor anywhere in the state directory: the audit store (with its WAL) and the
        // event log.
        for f in fs::read_dir(d.db().parent().unwrap()).unwrap() {
            let f = f.unwrap().path();
            let bytes = fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(12).any(|w| w == b"sk-live-1234"),
                "the prompt's text is in {}",
                f.display()
            );
        }
    }
}
