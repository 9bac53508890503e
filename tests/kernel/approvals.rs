//! Escalation: `on_violation: ask` holds a session's open or exec of a named file in the
//! kernel (fanotify permission events) until a person answers with `agentwarden
//! approve|deny` from outside every session, or the rule's timeout does. Judged on what
//! the process got (the bytes, or `EPERM` before any byte), on how long it waited, and on
//! the approval row (who, when, note, scope) and the action's own row in the audit trail.

use std::{net::TcpListener, process::Child};

use crate::support::*;

/// The fixture's profile `name`: reads of the canary and the secret tree, and execs of
/// `bin/tool`, are asked about; unanswered, files after `file_timeout` are denied and
/// execs after `exec_timeout` allowed.
fn ask_profile(f: &PathFixture, name: &str, mode: &str, file_timeout: &str, exec_timeout: &str) {
    let text = format!(
        "name: {name}\ndescription: t\nowners: {{ business: fin-ops, technical: platform }}\n\
         mode: {mode}\n\
         exec:\n  deny: [{d}/bin/tool]\n  on_violation: ask\n  timeout: {exec_timeout}\n  on_timeout: allow\n\
         files:\n  deny: [{d}/canary, {d}/secret/**]\n  on_violation: ask\n  timeout: {file_timeout}\n",
        d = f.dir.display()
    );
    fs::write(f.rules.path().join(format!("{name}.yaml")), text).unwrap();
}

/// `sh -c SCRIPT` in a new `run` session, left running.
fn spawn_session(d: &Daemon, profile: &str, name: &str, cwd: &Path, script: &str) -> Child {
    d.cli()
        .args(["run", "--profile", profile, "--session-name", name, "--"])
        .args(["/bin/sh", "-c", script])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The session's output once it ended (within the tests' patience).
fn finish(mut c: Child) -> Output {
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > patience() {
            let _ = c.kill();
            panic!("the session never ended");
        }
        thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// `agentwarden pending --json`.
fn pending(d: &Daemon) -> Vec<serde_json::Value> {
    d.json(&["pending", "--json"])
}

/// Waits for the pending request of the held operation on `path`.
fn request_for(d: &Daemon, path: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(r) = pending(d).into_iter().find(|r| r["path"] == path) {
            return r;
        }
        assert!(
            start.elapsed() < patience(),
            "no request for {path}: {:?}\n{}",
            pending(d),
            d.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `agentwarden approve|deny ARGS`.
fn answer(d: &Daemon, args: &[&str]) -> Output {
    d.cli().args(args).output_within()
}

/// The session's audit rows once its approval rows (`n`) and its end are in.
fn audit_rows(d: &Daemon, session: &str, n: usize) -> Vec<serde_json::Value> {
    let sid = d.session(session).id;
    let start = Instant::now();
    loop {
        let rows = d.audit_session(&sid);
        if rows.iter().filter(|r| r["kind"] == "approval").count() >= n {
            return rows;
        }
        assert!(start.elapsed() < patience(), "{n} approval rows: {rows:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A read of an `ask` file waits (the process is held in `open`) until a person
/// approves it from outside the session, then gets the bytes; the approval row names
/// who (uid, user, process), the note and the scope, and the open's own row is
/// `approved` by `fanotify`. Approved `once`, the next read asks again; denied, it fails
/// with `EPERM` and no byte; an answer to a request already answered changes nothing; a
/// process inside a session cannot answer at all.
#[test]
fn a_held_read_is_approved_or_denied_by_a_person_outside_the_session() {
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "5m", "5m");
    let Some(d) = f.daemon() else { return };
    let canary = format!("{}/canary", f.dir.display());
    let script = format!("cat {canary}; echo rc=$?; cat {canary}; echo rc=$?");
    let session = spawn_session(&d, "asks", "held", &f.dir, &script);
    let first = request_for(&d, &canary);
    assert_eq!(
        (
            &first["agent"],
            &first["session_name"],
            &first["access"],
            &first["business_owner"],
            &first["technical_owner"],
            &first["principal_uid"],
            &first["comm"],
            &first["waiting"],
            &first["on_timeout"],
        ),
        (
            &"asks".into(),
            &"held".into(),
            &"open".into(),
            &"fin-ops".into(),
            &"platform".into(),
            &0.into(),
            &"cat".into(),
            &1.into(),
            &"deny".into(),
        ),
        "{first}"
    );
    assert!(
        first["rule"].as_str().unwrap().contains("files.deny"),
        "{first}"
    );
    // Held: nothing moves while nobody answers.
    thread::sleep(scaled(Duration::from_millis(500)));
    let again = pending(&d);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0]["waiting_ms"].as_u64().unwrap() >= 500, "{again:?}");
    // From inside a session, no answer is taken.
    let work = tempfile::tempdir().unwrap();
    let inside = d.run_in(
        "self-approve",
        work.path(),
        &[
            bin(),
            "--socket",
            d.socket().to_str().unwrap(),
            "approve",
            &first["id"].to_string(),
        ],
    );
    assert!(!inside.status.success(), "{inside:?}");
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("a session cannot administer"),
        "{inside:?}"
    );
    assert_eq!(pending(&d).len(), 1, "the request still waits");
    let id = first["id"].to_string();
    let ok = answer(&d, &["approve", &id, "--note", "ticket 42"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("1 waiting operation(s) answered"),
        "{ok:?}"
    );
    // Approved once: the second read asks again, and is denied.
    let second = request_for(&d, &canary);
    assert_ne!(second["id"], first["id"]);
    let late = answer(&d, &["approve", &id]);
    assert!(!late.status.success(), "{late:?}");
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("no pending request"),
        "{late:?}"
    );
    let no = answer(
        &d,
        &["deny", &second["id"].to_string(), "--note", "not today"],
    );
    assert!(no.status.success(), "{no:?}");
    let out = finish(session);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "CANARY-BYTES\nrc=0\nrc=1\n", "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    let rows = audit_rows(&d, "held", 2);
    let approvals: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["kind"] == "approval").collect();
    let a = &approvals[0]["approval"];
    assert_eq!(
        (
            &a["outcome"],
            &a["by"]["uid"],
            &a["by"]["user"],
            &a["note"],
            &a["scope"],
            &a["path"],
            &a["held"]
        ),
        (
            &"approved".into(),
            &0.into(),
            &"root".into(),
            &"ticket 42".into(),
            &"once".into(),
            &canary.clone().into(),
            &1.into()
        ),
        "{rows:?}"
    );
    assert!(a["waited_ms"].as_u64().unwrap() >= 500, "{a}");
    assert_eq!(
        (
            &approvals[0]["decision"]["action"],
            &approvals[0]["decision"]["enforced_by"]
        ),
        (&"approved".into(), &"fanotify".into())
    );
    let b = &approvals[1]["approval"];
    assert_eq!(
        (
            &b["outcome"],
            &b["note"],
            &approvals[1]["decision"]["action"]
        ),
        (&"denied".into(), &"not today".into(), &"blocked".into())
    );
    // The open itself: approved where it went ahead, blocked where it did not.
    let opens: Vec<(&serde_json::Value, &serde_json::Value)> = rows
        .iter()
        .filter(|r| r["kind"] == "open" && r["open"]["path"] == canary.as_str())
        .map(|r| (&r["decision"]["action"], &r["decision"]["enforced_by"]))
        .collect();
    assert!(
        opens.contains(&(&"approved".into(), &"fanotify".into())),
        "{opens:?}"
    );
    assert!(
        opens.contains(&(&"blocked".into(), &"fanotify".into())),
        "{opens:?}"
    );
    let timeline = d.audit(&["timeline", "--session", "held"]);
    let text = String::from_utf8_lossy(&timeline.stdout);
    assert!(
        text.contains("approved by root (uid 0)") && text.contains("denied by root (uid 0)"),
        "{text}"
    );
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
}

/// An exec of an `ask` program is held like an open: approved for the session, it runs,
/// and its next exec runs without asking; denied, it fails with `EPERM` and nothing of
/// it runs. Unanswered, a read is refused at the timeout
/// (`on_timeout: deny`, after the timeout and not before) and an exec let through
/// (`on_timeout: allow`); both are recorded as timed out, answered by nobody. In monitor
/// mode nothing is held: the read is recorded `would_ask`.
#[test]
fn execs_are_held_grants_last_the_session_and_timeouts_answer_by_the_rule() {
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "2s", "5m");
    ask_profile(&f, "quick", "enforce", "2s", "2s");
    ask_profile(&f, "watch", "monitor", "2s", "2s");
    let Some(d) = f.daemon() else { return };
    let tool = format!("{}/bin/tool", f.dir.display());
    let key = format!("{}/secret/key", f.dir.display());
    // `bin/tool` is `od`: it prints the bytes of what it is given.
    let script = format!(
        "{tool} -c {0}/ok.txt >/dev/null; echo first=$?; {tool} -c {0}/ok.txt >/dev/null; echo second=$?",
        f.dir.display()
    );
    let session = spawn_session(&d, "asks", "exec", &f.dir, &script);
    let r = request_for(&d, &tool);
    assert_eq!(r["access"], "exec", "{r}");
    let ok = answer(&d, &["approve", &r["id"].to_string(), "--session"]);
    assert!(ok.status.success(), "{ok:?}");
    let out = finish(session);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first=0\nsecond=0\n",
        "{out:?}"
    );
    let rows = audit_rows(&d, "exec", 1);
    let execs = rows
        .iter()
        .filter(|r| r["kind"] == "exec" && r["exec"]["path"] == tool.as_str())
        .filter(|r| r["decision"]["action"] == "approved")
        .count();
    assert_eq!(execs, 2, "both execs approved, one asked: {rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r["kind"] == "approval").count(),
        1,
        "{rows:?}"
    );

    // Denied: the exec fails (`EPERM`; the shell says 126) and nothing of it runs.
    let script = format!("{tool} -c {}/ok.txt; echo denied=$?", f.dir.display());
    let session = spawn_session(&d, "asks", "exec-denied", &f.dir, &script);
    let r = request_for(&d, &tool);
    let no = answer(&d, &["deny", &r["id"].to_string()]);
    assert!(no.status.success(), "{no:?}");
    let out = finish(session);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "denied=126\n",
        "{out:?}"
    );
    let rows = audit_rows(&d, "exec-denied", 1);
    assert!(
        rows.iter().any(|r| r["kind"] == "exec"
            && r["exec"]["path"] == tool.as_str()
            && r["decision"]["action"] == "blocked"
            && r["decision"]["enforced_by"] == "fanotify"),
        "{rows:?}"
    );

    // Nobody answers.
    let started = Instant::now();
    let script = format!(
        "cat {key}; echo read=$?; {tool} -c {}/ok.txt >/dev/null; echo exec=$?",
        f.dir.display()
    );
    let out = finish(spawn_session(&d, "quick", "silence", &f.dir, &script));
    let took = started.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "read=1\nexec=0\n",
        "{out:?}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "both waited their 2s: {took:?}"
    );
    let rows = audit_rows(&d, "silence", 2);
    let outcomes: Vec<(&serde_json::Value, &serde_json::Value, bool)> = rows
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            (
                &r["approval"]["outcome"],
                &r["approval"]["allowed"],
                r["approval"]["by"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (&"timed_out".into(), &false.into(), true),
            (&"timed_out".into(), &true.into(), true)
        ],
        "{rows:?}"
    );
    // An approval after the timeout changes nothing.
    let timed_out =
        rows.iter().find(|r| r["kind"] == "approval").unwrap()["approval"]["request"].to_string();
    let late = answer(&d, &["approve", &timed_out]);
    assert!(
        !late.status.success()
            && String::from_utf8_lossy(&late.stderr).contains("no pending request"),
        "{late:?}"
    );

    // Monitor mode: recorded, never held.
    let started = Instant::now();
    let out = finish(spawn_session(
        &d,
        "watch",
        "watched",
        &f.dir,
        &format!("cat {key}"),
    ));
    assert!(started.elapsed() < Duration::from_secs(2) * 4, "not held");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "KEY-BYTES\n",
        "{out:?}"
    );
    assert!(pending(&d).is_empty());
    let sid = d.session("watched").id;
    let rows = d.audit_session(&sid);
    assert!(
        rows.iter().any(|r| r["kind"] == "open"
            && r["open"]["path"] == key.as_str()
            && r["decision"]["action"] == "would_ask"),
        "{rows:?}"
    );
}

/// A dozen held operations at once (twelve sessions, twelve files) stall neither the
/// daemon's control socket nor other sessions: a session outside them runs to its end,
/// `status` answers, `pending` lists all twelve; denied, every one ends with `EPERM`.
#[test]
fn a_dozen_pending_requests_stall_nothing_else() {
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "5m", "5m");
    for i in 0..12 {
        fs::write(f.dir.join(format!("secret/k{i}")), format!("K{i}\n")).unwrap();
    }
    let Some(d) = f.daemon() else { return };
    let sessions: Vec<Child> = (0..12)
        .map(|i| {
            let script = format!("cat {}/secret/k{i}", f.dir.display());
            spawn_session(&d, "asks", &format!("many-{i}"), &f.dir, &script)
        })
        .collect();
    let start = Instant::now();
    while pending(&d).len() < 12 {
        assert!(start.elapsed() < patience(), "{:?}", pending(&d));
        thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile: another session runs, the control socket answers.
    let t = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let other = d.run_in(
        "bystander",
        work.path(),
        &["/bin/sh", "-c", "cat /etc/hostname >/dev/null; echo done"],
    );
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "done\n",
        "{other:?}"
    );
    let _: StatusReport = d.json(&["status", "--json"]);
    println!(
        "a session and a status call beside 12 held operations: {:?}",
        t.elapsed()
    );
    for r in pending(&d) {
        let no = answer(&d, &["deny", &r["id"].to_string()]);
        assert!(no.status.success(), "{no:?}");
    }
    for s in sessions {
        let out = finish(s);
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty(), "no byte: {out:?}");
    }
    assert!(pending(&d).is_empty());
}

/// A webhook service on loopback: checks each request's signature (400 if it does not
/// match), writes it to `requests.jsonl`, and answers a read of the canary with an
/// approval by `alice` signed with the shared secret, and anything else with one signed
/// with another secret (a forgery).
const WEBHOOK: &str = r#"
import hashlib, hmac, http.server, json, sys
secret, log = open(sys.argv[1], 'rb').read().strip(), sys.argv[2]
def sign(key, body):
    return 'sha256=' + hmac.new(key, body, hashlib.sha256).hexdigest()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        if not hmac.compare_digest(sign(secret, body), self.headers.get('X-Agentwarden-Signature', '')):
            self.send_response(400); self.end_headers(); return
        req = json.loads(body)['request']
        with open(log, 'a') as f: f.write(json.dumps(req) + '\n')
        genuine = req['path'].endswith('/canary')
        answer = json.dumps({'answer': 'approve', 'approver': 'alice', 'note': 'via chat'}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(answer)))
        self.send_header('X-Agentwarden-Signature', sign(secret if genuine else b'not-the-shared-secret', answer))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// With `--approval-webhook`, each request is POSTed signed with the shared secret; the
/// service's signed answer approves (recorded as `alice` via `webhook`, with its note),
/// while an answer signed with another secret changes nothing (counted; the request
/// waits for a person, who denies it).
#[test]
fn a_webhook_answers_with_its_signed_word_and_a_forged_answer_changes_nothing() {
    use std::{io::BufRead as _, os::unix::fs::PermissionsExt as _};
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "5m", "5m");
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    fs::write(&secret, "shared-secret-of-this-test\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let log = keys.path().join("requests.jsonl");
    let mut server = Command::new("python3")
        .args(["-c", WEBHOOK])
        .arg(&secret)
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Kill(server);
    let url = format!("http://127.0.0.1:{}/approve", port.trim());
    let Some(d) = f.daemon_with(&[
        "--approval-webhook",
        &url,
        "--approval-webhook-secret-file",
        secret.to_str().unwrap(),
    ]) else {
        return;
    };
    let canary = format!("{}/canary", f.dir.display());
    let key = format!("{}/secret/key", f.dir.display());
    let out = finish(spawn_session(
        &d,
        "asks",
        "chat",
        &f.dir,
        &format!("cat {canary}; echo rc=$?"),
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "CANARY-BYTES\nrc=0\n",
        "{out:?}\n{}",
        d.log()
    );
    let rows = audit_rows(&d, "chat", 1);
    let a = &rows.iter().find(|r| r["kind"] == "approval").unwrap()["approval"];
    assert_eq!(
        (&a["outcome"], &a["by"]["via"], &a["by"]["user"], &a["note"]),
        (
            &"approved".into(),
            &"webhook".into(),
            &"alice".into(),
            &"via chat".into()
        ),
        "{a}"
    );
    let sent: Vec<serde_json::Value> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (
            &sent[0]["agent"],
            &sent[0]["session_name"],
            &sent[0]["path"]
        ),
        (&"asks".into(), &"chat".into(), &canary.clone().into()),
        "{sent:?}"
    );

    // A forged answer.
    let session = spawn_session(&d, "asks", "forged", &f.dir, &format!("cat {key}"));
    let r = request_for(&d, &key);
    let errors = || -> u64 {
        let st: StatusReport = d.json(&["status", "--json"]);
        st.kernel_counters
            .iter()
            .find(|c| c.name == "ask_webhook_errors")
            .map_or(0, |c| c.total)
    };
    let start = Instant::now();
    while errors() == 0 {
        assert!(start.elapsed() < patience(), "no refused answer counted");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pending(&d)[0]["id"], r["id"], "still waiting");
    assert!(
        d.log().contains("does not match the shared secret"),
        "{}",
        d.log()
    );
    let no = answer(&d, &["deny", &r["id"].to_string()]);
    assert!(no.status.success(), "{no:?}");
    let out = finish(session);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    let rows = audit_rows(&d, "forged", 1);
    let a = &rows.iter().find(|r| r["kind"] == "approval").unwrap()["approval"];
    assert_eq!(
        (&a["outcome"], &a["by"]["via"]),
        (&"denied".into(), &"control".into())
    );
}

/// Connects to `127.0.0.2:PORT`, sends `ping`, prints what comes back (or the error).
const HELD_CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection(("127.0.0.2", int(sys.argv[1])), timeout=120)
    s.sendall(b"ping")
    print("got=" + s.recv(100).decode())
except OSError as e:
    print("error=" + str(e.errno))
"#;

/// `network.on_violation: ask`: a connect the profile denies is sent to the daemon's
/// holding endpoint and waits there; the destination sees nothing (no connection, no
/// byte) until a person approves, then gets the connection and the bytes the agent had
/// sent, and its answer reaches the agent. A denied one ends with a reset and never
/// reaches the destination. Recorded `held` by the cgroup layer, then the approval rows.
#[test]
fn a_held_connection_reaches_its_destination_only_after_approval() {
    use std::io::{Read as _, Write as _};
    let dest = TcpListener::bind("127.0.0.2:0").unwrap();
    dest.set_nonblocking(true).unwrap();
    let port = dest.local_addr().unwrap().port().to_string();
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("netask.yaml"),
        "name: netask\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         network:\n  default: deny\n  on_violation: ask\n  timeout: 5m\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let target = format!("127.0.0.2:{port}");
    let nothing_arrived = |dest: &TcpListener| matches!(dest.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let session = spawn_session(
        &d,
        "netask",
        "conn",
        work.path(),
        &format!("python3 -c '{HELD_CLIENT}' {port}"),
    );
    let r = request_for(&d, &target);
    assert_eq!(
        (&r["access"], &r["agent"]),
        (&"connect".into(), &"netask".into()),
        "{r}"
    );
    thread::sleep(scaled(Duration::from_millis(300)));
    assert!(
        nothing_arrived(&dest),
        "the destination was reached before an approval"
    );
    let ok = answer(
        &d,
        &["approve", &r["id"].to_string(), "--note", "vendor API"],
    );
    assert!(ok.status.success(), "{ok:?}");
    let start = Instant::now();
    let mut conn = loop {
        match dest.accept() {
            Ok((c, _)) => break c,
            Err(_) => {
                assert!(
                    start.elapsed() < patience(),
                    "the approved connection never came"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    conn.set_nonblocking(false).unwrap();
    let mut ping = [0u8; 4];
    conn.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"ping");
    conn.write_all(b"pong").unwrap();
    let out = finish(session);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got=pong\n",
        "{out:?}"
    );

    let session = spawn_session(
        &d,
        "netask",
        "refused-conn",
        work.path(),
        &format!("python3 -c '{HELD_CLIENT}' {port}"),
    );
    let r = request_for(&d, &target);
    let no = answer(&d, &["deny", &r["id"].to_string()]);
    assert!(no.status.success(), "{no:?}");
    let out = finish(session);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said == "error=104\n" || said == "got=\n", "a reset: {said}");
    thread::sleep(scaled(Duration::from_millis(200)));
    assert!(
        nothing_arrived(&dest),
        "a denied connection reached the destination"
    );
    for (session, outcome) in [("conn", "approved"), ("refused-conn", "denied")] {
        let rows = audit_rows(&d, session, 1);
        assert!(
            rows.iter().any(|r| r["kind"] == "net_decision"
                && r["decision"]["action"] == "held"
                && r["decision"]["enforced_by"] == "cgroup"),
            "{rows:?}"
        );
        let a = &rows.iter().find(|r| r["kind"] == "approval").unwrap()["approval"];
        assert_eq!(
            (&a["outcome"], &a["access"], &a["path"]),
            (&outcome.into(), &"connect".into(), &target.clone().into()),
            "{a}"
        );
    }
}

/// `tools.on_violation: ask`: the agent's hook (here `agentwarden hook claude-code` run
/// in the session, as Claude Code runs it) holds a call a `tools:` rule denies until a
/// person answers: approved, the hook lets it run; denied, it refuses it (Claude Code's
/// `permissionDecision: deny`, with the reason for the model). The tool call rows say `approved` and
/// `blocked` by the hook, and the approval rows name the call.
#[test]
fn a_tool_call_is_held_in_its_hook_until_a_person_answers() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("toolask.yaml"),
        "name: toolask\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         tools:\n  deny: [\"Bash(rm *)\"]\n  on_violation: ask\n  timeout: 5m\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let call = |id: &str| {
        serde_json::json!({
            "session_id": "agent-1", "hook_event_name": "PreToolUse", "prompt_id": "p1",
            "tool_name": "Bash", "tool_input": {"command": "rm -rf build"}, "tool_use_id": id,
        })
        .to_string()
    };
    fs::write(work.path().join("first.json"), call("toolu_1")).unwrap();
    fs::write(work.path().join("second.json"), call("toolu_2")).unwrap();
    let script = format!(
        "export AGENTWARDEN_HOOK_SOCKET={sock} AGENTWARDEN_HOOK_ANSWER_SECS=310; \
         {bin} hook claude-code < first.json; echo first=$?; \
         {bin} hook claude-code < second.json; echo second=$?",
        sock = d.dir.path().join("hook.sock").display(),
        bin = bin()
    );
    let session = spawn_session(&d, "toolask", "tools", work.path(), &script);
    let what = "Bash rm -rf build";
    let first = request_for(&d, what);
    assert_eq!(
        (&first["access"], &first["rule"]),
        (
            &"tool_call".into(),
            &serde_json::Value::from(format!(
                "{}/toolask.yaml:6 (tools.deny[0])",
                rules.path().display()
            ))
        ),
        "{first}"
    );
    let ok = answer(&d, &["approve", &first["id"].to_string()]);
    assert!(ok.status.success(), "{ok:?}");
    let second = request_for(&d, what);
    assert_ne!(
        second["id"], first["id"],
        "`once`: the next call asks again"
    );
    let no = answer(
        &d,
        &["deny", &second["id"].to_string(), "--note", "not on prod"],
    );
    assert!(no.status.success(), "{no:?}");
    let out = finish(session);
    // Approved: the hook says nothing (the call runs). Denied: Claude Code's refusal,
    // with the reason for the model.
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        (lines.len(), lines[0], lines[2]),
        (3, "first=0", "second=0"),
        "{out:?}"
    );
    let refusal: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        refusal["hookSpecificOutput"]["permissionDecision"], "deny",
        "{refusal}"
    );
    assert!(
        refusal["hookSpecificOutput"]["permissionDecisionReason"]
            .as_str()
            .unwrap()
            .contains("agentwarden refused this tool call"),
        "{refusal}"
    );
    let rows = audit_rows(&d, "tools", 2);
    let calls: Vec<(&serde_json::Value, &serde_json::Value, &serde_json::Value)> = rows
        .iter()
        .filter(|r| r["kind"] == "tool_call")
        .map(|r| {
            (
                &r["tool_call"]["id"],
                &r["decision"]["action"],
                &r["decision"]["enforced_by"],
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            (&"toolu_1".into(), &"approved".into(), &"hook".into()),
            (&"toolu_2".into(), &"blocked".into(), &"hook".into())
        ],
        "{rows:?}"
    );
    let outcomes: Vec<&str> = rows
        .iter()
        .filter(|r| r["kind"] == "approval")
        .filter_map(|r| r["approval"]["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["approved", "denied"], "{rows:?}");
}

/// Where nothing can hold an operation (the refusal layer left out), a profile that asks
/// is refused at enrolment, naming what is missing, and the agent never runs unwatched
/// or unasked: files, connections and tool calls alike.
#[test]
fn a_profile_that_asks_is_refused_where_nothing_can_hold() {
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "5m", "5m");
    fs::write(
        f.rules.path().join("netask.yaml"),
        "name: netask\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         network:\n  default: deny\n  on_violation: ask\n",
    )
    .unwrap();
    let Some(d) = f.daemon_with(&["--no-refusal"]) else {
        return;
    };
    for profile in ["asks", "netask"] {
        let out = d.run_profile(profile, profile, &f.dir, &["/bin/echo", "RAN"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{profile}: {out:?}");
        assert!(err.contains("fanotify"), "{profile}: {err}");
        assert!(out.stdout.is_empty(), "{profile}: the agent ran: {out:?}");
    }
}

/// Another route to a held file: an open submitted through io_uring (no `openat` for a
/// rule on the syscall to see) waits like the syscall's: denied, it fails with `EPERM`;
/// approved, the bytes are read.
#[test]
fn an_io_uring_open_is_held_like_the_syscall() {
    let f = PathFixture::new();
    ask_profile(&f, "asks", "enforce", "5m", "5m");
    let Some(d) = f.daemon() else { return };
    let canary = format!("{}/canary", f.dir.display());
    let script = format!(
        "echo first=$({p} uring-open {canary}); echo second=$({p} uring-open {canary})",
        p = probe()
    );
    let session = spawn_session(&d, "asks", "uring", &f.dir, &script);
    let first = request_for(&d, &canary);
    let no = answer(&d, &["deny", &first["id"].to_string()]);
    assert!(no.status.success(), "{no:?}");
    let second = request_for(&d, &canary);
    assert_ne!(second["id"], first["id"]);
    let ok = answer(&d, &["approve", &second["id"].to_string()]);
    assert!(ok.status.success(), "{ok:?}");
    let out = finish(session);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first=errno 1\nsecond=ok-LEAK\n",
        "{out:?}"
    );
}
